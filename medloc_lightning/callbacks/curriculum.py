"""`ThresholdCurriculumCallback`: drives any IoU-threshold schedule from a Lightning training loop.

The contract with the LightningModule is two lines: ``training_step`` returns a dict holding ``loss`` and
``ious`` (this step's IoUs, any shape), and the module reads its reward threshold from ``self.iou_threshold``.
For a schedule with ``window_unit="group"`` the IoUs' rows (their last axis) are the prompt groups, e.g.
``[B, G]``; a 1-D tensor is one group. A module that steps its optimizer several times per batch says so
with an ``optimizer_steps_per_batch`` attribute, so progress counts optimizer steps.
"""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from medloc_lightning import distributed
from medloc_lightning.curriculum import CurriculumMismatchError, ThresholdCurriculum, ThresholdSchedule
from medloc_lightning.lightning_utils import logs_this_step, total_optimizer_steps


class ThresholdCurriculumCallback(pl.Callback):
    """Observe per-step IoUs, move τ, and write it to ``pl_module.<attr>``; identical on every rank.

    IoUs are accumulated over gradient-accumulation micro-batches and observed once per batch that ends with an
    optimizer step: once per optimizer step under gradient accumulation, once per batch (rollout) for a module
    that steps its optimizer μ times per batch, so the window counts batches there while progress counts
    optimizer steps.
    Under DDP/FSDP each micro-batch's IoUs are all-gathered (whole groups) and observed in rank order, so every
    rank sees the same stream and therefore holds the same window and τ. The schedule's full state travels in
    the checkpoint, with its kind and settings, and so do the IoUs of a step still accumulating (every rank's):
    resuming between micro-batches continues exactly. Resuming under another schedule fails with a clear error,
    unless ``reset_on_mismatch=True``, which starts the configured schedule afresh (with a warning).
    """

    def __init__(
        self,
        schedule: ThresholdSchedule | None = None,
        ious_key: str = "ious",
        attr: str = "iou_threshold",
        log_prefix: str = "curriculum",
        prog_bar: bool = True,
        reset_on_mismatch: bool = False,
    ) -> None:
        super().__init__()
        self.schedule = ThresholdCurriculum() if schedule is None else schedule
        self.ious_key, self.attr, self.log_prefix, self.prog_bar = ious_key, attr, log_prefix, prog_bar
        self.reset_on_mismatch = reset_on_mismatch
        self._pending: list[list[torch.Tensor]] = []  # per rank: its groups of IoUs since the last optimizer step
        self._last_global_step: int | None = None
        self._total_steps: float | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(ious_key=self.ious_key, attr=self.attr)

    @property
    def tau(self) -> float:
        return self.schedule.tau

    @staticmethod
    def find(trainer: pl.Trainer) -> "ThresholdCurriculumCallback | None":
        """The trainer's curriculum callback (the first, if several), for callbacks that report on it."""
        return next((cb for cb in trainer.callbacks if isinstance(cb, ThresholdCurriculumCallback)), None)

    def _apply(self, pl_module: pl.LightningModule) -> None:
        setattr(pl_module, self.attr, self.schedule.tau)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after a checkpoint restore, so a resumed run's first step already sees the restored τ.
        self._apply(pl_module)
        if self._last_global_step is None:
            self._last_global_step = trainer.global_step
        total = total_optimizer_steps(trainer, int(getattr(pl_module, "optimizer_steps_per_batch", 1)))
        self._total_steps = None if not total or math.isinf(total) else total

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ious = _find_ious(outputs, self.ious_key)
        local = [] if ious is None else list(_groups(ious.detach().to(torch.float32)))
        # Gathered every micro-batch, so every rank holds every rank's pending IoUs and a checkpoint (written by
        # rank 0) resumes them on every rank.
        for rank, groups in enumerate(distributed.gather_ragged(local)):
            if rank == len(self._pending):
                self._pending.append([])
            self._pending[rank].extend(groups)
        if trainer.global_step == self._last_global_step:
            return  # mid-accumulation: no optimizer step yet
        self._last_global_step = trainer.global_step
        groups = [g for rank_groups in self._pending for g in rank_groups if g.numel()]  # rank order, whole groups
        self._pending = []
        if not groups:
            return
        observed: Any = groups if self.schedule.window_unit == "group" else torch.cat(groups)
        progress = None if self._total_steps is None else min(1.0, trainer.global_step / self._total_steps)
        raised = self.schedule.observe(observed, progress=progress)
        self._apply(pl_module)
        self._log(trainer, pl_module, raised)
        if raised:
            rank_zero_info(
                f"[curriculum] step {trainer.global_step}: tau raised to {self.schedule.tau:.3f} "
                f"(raise {self.schedule.num_raises})"
            )

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, raised: bool) -> None:
        kw = {"on_step": True, "on_epoch": False, "batch_size": 1}
        pl_module.log(f"{self.log_prefix}/tau", self.schedule.tau, prog_bar=self.prog_bar, **kw)
        if not (raised or logs_this_step(trainer)):
            return  # the logger would not write these this step (each self.log costs ~1 ms)
        for key, value in self.schedule.stats.items():
            if key != "tau" and not math.isnan(value):
                pl_module.log(f"{self.log_prefix}/{key}", value, **kw)
        pl_module.log(f"{self.log_prefix}/raised", float(raised), **kw)

    def state_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.state_dict(),
            "pending_by_rank": [list(groups) for groups in self._pending],  # every rank's, as each rank holds them
            "last_global_step": self._last_global_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            self.schedule.load_state_dict(state_dict["schedule"])
        except CurriculumMismatchError as err:
            if not self.reset_on_mismatch:
                raise
            rank_zero_warn(f"{err} reset_on_mismatch=True: the configured schedule starts afresh at tau = "
                           f"{self.schedule.tau} with an empty window.")
            return
        self._pending = [[g.clone() for g in groups] for groups in state_dict["pending_by_rank"]]
        self._last_global_step = state_dict["last_global_step"]


def _find_ious(outputs: Any, key: str) -> torch.Tensor | None:
    if outputs is None:
        return None
    if not isinstance(outputs, dict) or key not in outputs:
        raise KeyError(
            f"ThresholdCurriculumCallback needs training_step to return a dict with {key!r}; "
            f"got {type(outputs).__name__}{' keys ' + str(list(outputs)) if isinstance(outputs, dict) else ''}"
        )
    return torch.as_tensor(outputs[key])


def _groups(ious: torch.Tensor) -> torch.Tensor:
    """The rows of ``ious`` along its last axis (a 0-D or 1-D tensor is one row)."""
    return ious.reshape(1, -1) if ious.ndim < 2 else ious.reshape(-1, ious.shape[-1])
