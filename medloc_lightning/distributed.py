"""Distributed execution for the grounding modules: what differs between one process, DDP, FSDP and FSDP2.

Every function takes the Trainer (or the module) and does the plain single-process thing when there is no
trainer or one rank, so the modules read the same on every strategy.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from torch import Tensor


def world_size(module: pl.LightningModule) -> int:
    """Ranks of the attached trainer (1 without one)."""
    return module.trainer.world_size if module._trainer is not None else 1


def is_sharded(trainer: pl.Trainer | None) -> bool:
    """Whether the strategy shards the weights (FSDP or FSDP2): submodules then run only inside the root forward."""
    return trainer is not None and isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


def max_and_sum(module: pl.LightningModule, values: list[float]) -> tuple[Tensor, Tensor]:
    """Element-wise max and sum of ``values`` over ranks (the values themselves with one rank)."""
    packed = torch.tensor([float(v) for v in values], device=module.device)
    if world_size(module) == 1:
        return packed, packed.clone()
    strategy = module.trainer.strategy
    return strategy.reduce(packed.clone(), reduce_op="max"), strategy.reduce(packed.clone(), reduce_op="sum")


def any_rank(module: pl.LightningModule, flag: bool) -> bool:
    """Whether ``flag`` holds on at least one rank (the flag itself with one rank)."""
    if world_size(module) == 1:
        return bool(flag)
    return bool(max_and_sum(module, [float(flag)])[0][0] > 0)


def step_is_finite(module: pl.LightningModule, loss: Tensor) -> bool:
    """Whether the loss and every gradient are finite on every rank, so all ranks skip or step together.

    Gradients are read from the strategy's model (FSDP1 keeps them on its flat parameters; FSDP2's are this
    rank's shards). Under a precision plugin with a gradient scaler (fp16 AMP) only the loss is checked: the
    scaler owns overflowing gradients and skips those steps itself.
    """
    finite = bool(torch.isfinite(loss).all())
    trainer = module._trainer
    scaled = trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None
    if finite and not scaled:
        model = trainer.model if trainer is not None and trainer.model is not None else module
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2 DTensor: this rank's shard
        finite = not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
    return not any_rank(module, not finite)


def mean_over_ranks(module: pl.LightningModule, values: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean of each scalar over ranks, in one collective."""
    if world_size(module) == 1:
        return values
    keys = sorted(values)
    stacked = module.trainer.strategy.reduce(torch.stack([values[k] for k in keys]), reduce_op="mean")
    return dict(zip(keys, stacked.unbind()))


@contextlib.contextmanager
def no_gradient_sync(module: pl.LightningModule, block: bool) -> Iterator[None]:
    """Under DDP with ``block``, skip the gradient all-reduce of the backward inside (all but the last chunk)."""
    strategy = module.trainer.strategy if module._trainer is not None else None
    if block and isinstance(strategy, DDPStrategy):
        with strategy.block_backward_sync():
            yield
    else:
        yield


@contextlib.contextmanager
def gathered_for_generation(module: pl.LightningModule, enabled: bool) -> Iterator[None]:
    """With ``enabled`` under FSDP/FSDP2, gather the full parameters once for a whole rollout instead of per
    layer and per decoding step (faster, at the memory cost of one unsharded model)."""
    strategy = module.trainer.strategy if module._trainer is not None else None
    if not enabled:
        yield
    elif isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(module.trainer.model, writeback=False, recurse=True):
            yield
    elif isinstance(strategy, ModelParallelStrategy):
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in module.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.set_reshard_after_forward(False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.set_reshard_after_forward(True)
                unit.reshard()
    else:
        yield


def clip_grad_norm(module: pl.LightningModule, optimizer: Any, max_norm: float) -> None:
    """Clip by global norm. FSDP1 needs its own sharding-aware clip (Lightning's refuses under FSDP); with
    FSDP2 the gradients are DTensors and torch's clip computes the norm over all shards."""
    model = module.trainer.model
    if hasattr(model, "clip_grad_norm_"):
        model.clip_grad_norm_(max_norm)
    elif isinstance(module.trainer.strategy, ModelParallelStrategy):
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], max_norm)
    else:
        module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")


@contextlib.contextmanager
def step_rng(seed: int, rank: int, step: int, device: torch.device) -> Iterator[None]:
    """Seed a step's randomness (sampling, dropout) as a pure function of (seed, rank, step): ranks differ,
    and a resumed run draws exactly what the uninterrupted one would have. The outer RNG state is restored."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 1_000_003 + rank * 7919 + step)
        yield
