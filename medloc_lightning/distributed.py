"""Distributed execution: the one module that talks to other ranks, and what differs between one process, DDP,
FSDP and FSDP2.

The collectives (`any_rank`, `all_ranks`, `sum_over_ranks`, `mean_over_ranks`, `gather_ragged`, `chunk_plan`)
run over every rank of the default ``torch.distributed`` process group, which Lightning's strategies and TRL's
trainer both set up; without one (a single process) each returns its input. Every rank must call them
together. The rest take the module and do the plain single-process thing without a sharding strategy.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:  # the collectives serve TRL too: Lightning is imported only where a strategy is inspected
    import lightning.pytorch as pl


# --- collectives ---------------------------------------------------------------------------------------------

def world_size() -> int:
    """Ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _device() -> torch.device:
    """Where collective buffers live: NCCL moves CUDA tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _reduce(values: list[float], op: Literal["sum", "max", "min"]) -> list[float]:
    packed = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(packed, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return packed.tolist()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on at least one rank."""
    return bool(flag) if world_size() == 1 else _reduce([float(flag)], "max")[0] > 0


def all_ranks(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    return bool(flag) if world_size() == 1 else _reduce([float(flag)], "min")[0] > 0


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The sum of each number over ranks, in one collective (every rank passes the same keys)."""
    if world_size() == 1:
        return dict(values)
    keys = sorted(values)
    return dict(zip(keys, _reduce([float(values[k]) for k in keys], "sum")))


def mean_over_ranks(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean of each scalar over ranks, in one collective (every rank passes the same keys)."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().to(_device(), torch.float32) for k in keys])
    dist.all_reduce(stacked)
    return {k: (v / world_size()).to(values[k].device) for k, v in zip(keys, stacked.unbind())}


def gather_ragged(groups: list[Tensor], dtype: torch.dtype = torch.float32) -> list[list[Tensor]]:
    """Every rank's list of 1-D tensors, indexed by rank, on the CPU; ranks may hold any number of any length.

    Three small all-gathers: how many tensors each rank holds, their lengths, the values (each padded to the
    longest)."""
    groups = [g.detach().reshape(-1).to("cpu", dtype) for g in groups]
    if world_size() == 1:
        return [groups]
    counts = _all_gather_padded(torch.tensor([len(groups)]), 1)[:, 0].tolist()
    if max(counts) == 0:
        return [[] for _ in counts]
    lengths = _all_gather_padded(torch.tensor([len(g) for g in groups], dtype=torch.long), max(counts))
    lengths_by_rank = [lengths[r, :c].tolist() for r, c in enumerate(counts)]
    totals = [sum(ls) for ls in lengths_by_rank]
    values = torch.cat(groups) if groups else torch.zeros(0, dtype=dtype)
    everything = _all_gather_padded(values, max(totals))
    return [list(torch.split(everything[r, :t], ls)) for r, (t, ls) in enumerate(zip(totals, lengths_by_rank))]


def _all_gather_padded(local: Tensor, size: int) -> Tensor:
    """All-gather a 1-D tensor padded with zeros to ``size``: [world_size, size], on the CPU."""
    padded = torch.zeros(size, dtype=local.dtype, device=_device())
    padded[: local.numel()] = local.to(padded.device)
    out = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(out, padded)
    return torch.stack(out).cpu()


def chunk_plan(num_rows: int, size: int) -> list[Tensor | None]:
    """This rank's row indices in chunks of at most ``size``, then ``None`` up to the most chunks any rank has.

    Every rank runs one pass per entry, so DDP's gradient all-reduce and FSDP's weight all-gathers meet: a rank
    with fewer rows runs a padding pass (weighted zero) for each ``None``. Empty when no rank has a row."""
    chunks: list[Tensor | None] = [torch.arange(s, min(s + size, num_rows)) for s in range(0, num_rows, size)]
    most = len(chunks) if world_size() == 1 else int(_reduce([float(len(chunks))], "max")[0])
    return chunks + [None] * (most - len(chunks))


# --- strategies ----------------------------------------------------------------------------------------------

def is_sharded(trainer: pl.Trainer | None) -> bool:
    """Whether the strategy shards the weights (FSDP or FSDP2): submodules then run only inside the root forward."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return trainer is not None and isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


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


@contextlib.contextmanager
def no_gradient_sync(module: pl.LightningModule, block: bool) -> Iterator[None]:
    """Under DDP with ``block``, skip the gradient all-reduce of the backward inside (all but the last chunk)."""
    from lightning.pytorch.strategies import DDPStrategy

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
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

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
