"""Distributed execution for the grounding modules: what differs between one process, DDP, FSDP and FSDP2.

Every function takes the Trainer (or the module) and does the plain single-process thing when there is no
trainer or one rank, so the modules read the same on every strategy.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import lightning.pytorch as pl
import numpy as np
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
    flags = torch.tensor([float(flag)], device=module.device)
    return bool(module.trainer.strategy.reduce(flags, reduce_op="max")[0] > 0)


def gradient_norm(module: pl.LightningModule) -> Tensor:
    """The total 2-norm of the gradients this rank holds (FSDP1: its flat parameters; FSDP2: its shards).

    It is finite on every rank exactly when the global norm is, once `any_rank` spreads a NaN or inf from the
    rank that holds it.
    """
    trainer = module._trainer
    model = trainer.model if trainer is not None and trainer.model is not None else module
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2 DTensor: this rank's shard
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=module.device)


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


def clip_grad_norm(module: pl.LightningModule, max_norm: float) -> Tensor:
    """Clip by global norm; return the norm before clipping, the same on every rank. FSDP1 needs its own
    sharding-aware clip; under FSDP2 the gradients are DTensors and torch's clip reduces over all shards; under
    DDP every rank holds the same averaged gradients."""
    model = module.trainer.model if module._trainer is not None else None
    if model is not None and hasattr(model, "clip_grad_norm_"):
        norm = model.clip_grad_norm_(max_norm)
    else:
        norm = torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


@contextlib.contextmanager
def step_rng(seed: int, rank: int, step: int, device: torch.device) -> Iterator[None]:
    """Seed a step's randomness (sampling, dropout) as a pure function of (seed, rank, step): ranks differ,
    and a resumed run draws exactly what the uninterrupted one would have. The outer RNG state is restored.

    Rank 0 seeds with ``seed * 1_000_003 + step`` (one-process runs keep the streams of earlier releases); other
    ranks hash that with their rank, since torch's CPU generator keeps only 32 bits of a seed and any offset
    scheme would make one rank replay another's stream a fixed number of steps later."""
    base = seed * 1_000_003 + step
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(base if rank == 0 else int(np.random.SeedSequence([base, rank]).generate_state(1)[0]))
        yield
