"""The curriculum lab: one function that trains BoxPolicy under a named method and reports what the paper
measures, shared by `benchmarks/reproduce.py` and `notebooks/curriculum_lab.ipynb`.

A method is the paper's name for a row of its tables: MedLoc-R1 itself, the baselines (fixed τ, V-Triune,
raw IoU, SFT) and the ablations (checks, fixed schedules, refresh, step decay). Every GRPO method runs the
same `GRPOGroundingModule`, `ThresholdCurriculumCallback` and `GroundingMetrics` as a Qwen2.5-VL run.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import lightning.pytorch as pl
import torch

from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback
from medloc_lightning.curriculum import (
    CosineStep,
    FixedThreshold,
    IntervalSchedule,
    LinearStep,
    ProgressSchedule,
    ThresholdCurriculum,
    ThresholdSchedule,
)
from medloc_lightning.module import GRPOGroundingModule, SFTGroundingModule
from medloc_lightning.rewards import GroundingReward


@dataclass(frozen=True)
class Method:
    """How to train: a reward kind and a τ schedule built for a run of ``steps`` optimizer steps (None: SFT)."""

    description: str
    schedule: Callable[[int], ThresholdSchedule] | None
    reward: str = "threshold"


def _interval(fraction: float, step: float) -> Callable[[int], ThresholdSchedule]:
    """The paper's blind fixed schedules, with raises every ``fraction`` of the run (our choice of spacing)."""
    return lambda steps: IntervalSchedule(every=max(1, round(fraction * steps)), step=step)


METHODS: dict[str, Method] = {
    "medloc": Method("MedLoc-R1: adaptive, piecewise 0.15/0.10/0.05, refresh 0.5", lambda s: ThresholdCurriculum()),
    "fixed_tau": Method("VLM-R1: fixed tau = 0.5", lambda s: FixedThreshold(0.5)),
    "v_triune": Method("V-Triune: tau by training progress, gated IoU reward",
                       lambda s: ProgressSchedule(ProgressSchedule.V_TRIUNE), reward="gated_iou"),
    "raw_iou": Method("Raw-IoU: continuous IoU reward", lambda s: FixedThreshold(0.5), reward="iou"),
    "sft": Method("SFT: box regression (Gaussian NLL of the GT box)", None),
    "no_accuracy_check": Method("w/o reward check", lambda s: ThresholdCurriculum(checks=("stability", "margin"))),
    "no_stability_check": Method("w/o stability check", lambda s: ThresholdCurriculum(checks=("accuracy", "margin"))),
    "no_margin_check": Method("w/o IoU-margin check", lambda s: ThresholdCurriculum(checks=("accuracy", "stability"))),
    "only_accuracy_check": Method("only the reward check", lambda s: ThresholdCurriculum(checks=("accuracy",))),
    "fixed_conservative": Method("fixed conservative: +0.05 every 10% of the run", _interval(0.10, 0.05)),
    "fixed_moderate": Method("fixed moderate: +0.10 every 10% of the run", _interval(0.10, 0.10)),
    "fixed_aggressive": Method("fixed aggressive: +0.15 every 5% of the run", _interval(0.05, 0.15)),
    "refresh_full": Method("refresh 1.0 (full replacement)", lambda s: ThresholdCurriculum(refresh=1.0)),
    "refresh_quarter": Method("refresh 0.25", lambda s: ThresholdCurriculum(refresh=0.25)),
    "step_linear": Method("linear step decay (delta0 0.15, min 0.05)", lambda s: ThresholdCurriculum(step=LinearStep())),
    "step_cosine": Method("cosine step decay (delta0 0.15, min 0.05)", lambda s: ThresholdCurriculum(step=CosineStep())),
}
"""``medloc`` doubles as the refresh-0.5 and piecewise-step rows of the ablations."""


@dataclass
class LabResult:
    """What one run measured; ``taus``/``hit_rates`` hold one value per optimizer step."""

    method: str
    seed: int
    steps: int
    test: dict[str, float]
    val: dict[str, float]
    zero_std_early: float
    """Fraction of all-equal reward groups (zero advantage) over the first 20% of the steps."""
    all_fail_early: float
    """Of all groups in the first 20% of the steps, the fraction where no completion earned any accuracy reward:
    the all-zero groups that starve a strict threshold (the rest of ``zero_std_early`` are all-pass groups)."""
    num_raises: int
    final_tau: float
    wall_s: float
    taus: list[float] = field(default_factory=list)
    hit_rates: list[float] = field(default_factory=list)
    policy: Any = field(default=None, repr=False, compare=False)
    """The trained policy with ``run(..., return_policy=True)``, else None; never part of `to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, policy=None))
        out.pop("policy")
        return out


class _Recorder(pl.Callback):
    """Per-step τ and window hit rate, and the zero-std and all-fail group fractions at 20% of the run."""

    def __init__(self, steps: int) -> None:
        self.early_at = max(1, round(0.2 * steps))
        self.taus: list[float] = []
        self.hit_rates: list[float] = []
        self.zero_std_early = self.all_fail_early = float("nan")
        self._groups = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.taus.append(float(getattr(pl_module, "iou_threshold", float("nan"))))
        curriculum = ThresholdCurriculumCallback.find(trainer)
        self.hit_rates.append(curriculum.schedule.stats["hit_rate"] if curriculum else float("nan"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        counts = getattr(pl_module, "counts", None)  # GRPO only
        if counts is None or not math.isnan(self.zero_std_early):
            return
        self._groups += len(batch)
        if trainer.global_step >= self.early_at:
            self.zero_std_early = counts["zero_std_groups"] / self._groups
            self.all_fail_early = counts["all_fail_groups"] / self._groups


def run(method: str, data: pl.LightningDataModule, steps: int = 800, seed: int = 0, *,
        policy_kwargs: dict[str, Any] | None = None, num_generations: int = 8, learning_rate: float = 2e-3,
        temperature: float = 1.0, val_every: int | None = None, log_dir: str | None = None,
        return_policy: bool = False) -> LabResult:
    """Train BoxPolicy with ``method`` for ``steps`` optimizer steps on ``data``, then test it."""
    from medloc_lightning.policies.box import BoxPolicy

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    spec = METHODS[method]
    pl.seed_everything(seed, verbose=False)
    policy = BoxPolicy(seed=seed, **(policy_kwargs or {}))
    callbacks: list[pl.Callback] = []
    if spec.schedule is None:
        module: pl.LightningModule = SFTGroundingModule(policy, learning_rate=learning_rate)
    else:
        module = GRPOGroundingModule(policy, num_generations=num_generations, temperature=temperature,
                                     reward=GroundingReward(kind=spec.reward), learning_rate=learning_rate,
                                     micro_batch_size=1024, seed=seed)
        callbacks.append(ThresholdCurriculumCallback(spec.schedule(steps), prog_bar=False))
    recorder = _Recorder(steps)
    callbacks.append(recorder)
    logger: Any = False
    if log_dir is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(log_dir, name=f"{method}_seed{seed}")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=logger, callbacks=callbacks,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, val_check_interval=val_every or steps,
                         check_val_every_n_epoch=None, limit_val_batches=1.0 if val_every else 0.0,
                         log_every_n_steps=50, deterministic=False)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
        test = trainer.test(module, data, verbose=False)[0]
    wall = time.perf_counter() - start
    schedule = callbacks[0].schedule if spec.schedule is not None else None
    return LabResult(
        method=method, seed=seed, steps=trainer.global_step,
        test={k.removeprefix("test/"): float(v) for k, v in test.items()},
        val={k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        zero_std_early=recorder.zero_std_early, all_fail_early=recorder.all_fail_early,
        num_raises=0 if schedule is None else schedule.num_raises,
        final_tau=float("nan") if schedule is None else schedule.tau,
        wall_s=wall, taus=recorder.taus, hit_rates=recorder.hit_rates,
        policy=policy.eval() if return_policy else None,
    )


def lab_data(root: str, n: int = 1200, size: int = 128, seed: int = 0, preset: str = "lab",
             batch_size: int = 8) -> pl.LightningDataModule:
    """The lab's synthetic data (mixed modalities), generated once into ``root`` and cached in memory."""
    from medloc_lightning.data import SyntheticDataModule

    torch.set_num_threads(1)
    return SyntheticDataModule(root=root, n=n, size=size, synth_seed=seed, preset=preset, batch_size=batch_size,
                               cache_images=True, seed=seed, workers=1)
