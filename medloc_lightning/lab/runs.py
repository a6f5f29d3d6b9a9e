"""The curriculum lab's runs: one method of the paper's tables (`medloc_lightning.lab.methods`) trained on the
fast BoxPolicy.

A method brings its curriculum, its reward and its module class (GRPO or SFT). What belongs to the policy and the
machine (learning rate, group size, temperature, batch, run length) is the lab's regime instead: BoxPolicy is not
a 3B VLM. BoxPolicy writes no reasoning text, so the lab drops the format term of the reward.

Two regimes (`REGIMES`): every run starts from random weights, or from one shared grounding prior, a BoxPolicy
warm-started by SFT on another synthetic distribution (`build_prior`), as the paper starts from a pretrained VLM.
`run` trains one method in one regime with the same `GRPOGroundingModule`, `ThresholdCurriculumCallback` and
`GroundingMetrics` as a Qwen2.5-VL run; `benchmarks/reproduce.py` and `notebooks/curriculum_lab.ipynb` use it.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback
from medloc_lightning.errors import ConfigError
from medloc_lightning.lab.methods import Method, load_method
from medloc_lightning.module import GRPOGroundingModule, SFTGroundingModule
from medloc_lightning.rewards import GroundingReward

# --- regimes -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prior:
    """A grounding prior for the lab: BoxPolicy trained by SFT on ``source_preset`` images (another distribution
    than the ``lab`` target), kept at its best source-validation mIoU after at most ``steps`` steps.

    The default is the paper's starting point in miniature: ``easy`` images hold one large, high-contrast
    structure, so a short SFT learns to find structures and box them, but its boxes are too loose for the
    ``lab`` preset's small targets: it hits at τ 0.3 but rarely at 0.5 (measured by `build_prior`'s report).
    """

    source_preset: str = "easy"
    n: int = 1200
    steps: int = 60
    learning_rate: float = 2e-3
    val_every: int = 20
    seed: int = 0


@dataclass(frozen=True)
class Regime:
    """Where every run of the lab starts (random weights, or the shared `Prior`), and how long it trains."""

    name: str
    steps: int
    learning_rate: float = 2e-3
    prior: Prior | None = None


REGIMES: dict[str, Regime] = {
    "random_init": Regime("random_init", steps=600),
    "prior": Regime("prior", steps=600, prior=Prior()),
}
"""Both regimes train 600 steps at the same learning rate; the full grid of both (150 runs) takes about 17 minutes
on two cores. From the prior, 5e-3 undoes the prior within 100 steps and 1e-3 climbs no faster than 2e-3."""


def build_prior(root: str | os.PathLike, prior: Prior, target: pl.LightningDataModule, size: int = 128,
                batch_size: int = 8, policy_kwargs: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Warm-start BoxPolicy by SFT on the prior's source set (`prior.warm_start`), export it to ``root/policy``
    and report it on ``target``'s validation split. Reuses an export made with the same recipe and target data
    (a synthetic target's generation arguments; another DataModule's files)."""
    from medloc_lightning.data import SyntheticDataModule
    from medloc_lightning.policies.box import BoxPolicy
    from medloc_lightning.lab.report import grounding_report, json_ready, load_split, train_boxes
    from medloc_lightning.prior import warm_start

    root = Path(root)
    report_path = root / "prior.json"
    recipe = {**asdict(prior), "size": size, "batch_size": batch_size, "policy": dict(policy_kwargs or {}),
              "target": _data_key(target)}
    if report_path.is_file():
        saved = json.loads(report_path.read_text(encoding="utf-8"))
        if saved.get("recipe") == recipe and (root / "policy").is_dir():
            return str(root / "policy"), saved
    torch.set_num_threads(1)
    pl.seed_everything(prior.seed, verbose=False)
    policy = BoxPolicy(seed=prior.seed, **(policy_kwargs or {}))
    source = SyntheticDataModule(root=str(root / f"source_{prior.source_preset}"), n=prior.n, size=size,
                                 preset=prior.source_preset, synth_seed=prior.seed + 1, batch_size=batch_size,
                                 cache_images=True, seed=prior.seed, workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = warm_start(SFTGroundingModule(policy, learning_rate=prior.learning_rate), source, max_steps=prior.steps,
                         val_every=prior.val_every, root=root / "sft", log=False)
    policy.eval().export(str(root / "policy"))
    thresholds = (0.3, 0.5)
    report = {"recipe": recipe, "fit": {k: v for k, v in fit.items() if k != "best_checkpoint"},
              "source_val": grounding_report(policy, load_split(source, "val"), train_boxes(source), thresholds=thresholds),
              "target_val": grounding_report(policy, load_split(target, "val"), train_boxes(target), thresholds=thresholds)}
    report_path.write_text(json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return str(root / "policy"), json.loads(report_path.read_text(encoding="utf-8"))  # as a reuse returns it


def _data_key(data: pl.LightningDataModule) -> dict[str, Any]:
    """What identifies a DataModule's data in `build_prior`'s recipe."""
    synth = getattr(data, "synth", None)
    if synth is not None:
        return dict(synth)
    files = getattr(data, "files", None)
    return {"files": dict(files)} if files else {"class": f"{type(data).__module__}.{type(data).__qualname__}"}


# --- one run -------------------------------------------------------------------------------------------------

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
    regime: str = "random_init"
    taus: list[float] = field(default_factory=list)
    hit_rates: list[float] = field(default_factory=list)
    reward_stds: list[float] = field(default_factory=list)
    iou_margins: list[float] = field(default_factory=list)
    """The window's r̄, σ and m̄ at the start of each step (NaN before the first observation or without a
    curriculum): with ``taus`` they show which check held τ."""
    test_ious: list[float] = field(default_factory=list)
    """The IoU of each test image's greedy answer (0 when unparsed), in the test split's order."""
    policy: Any = field(default=None, repr=False, compare=False)
    """The trained policy with ``run(..., return_policy=True)``, else None; never part of `to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, policy=None))
        out.pop("policy")
        return out


class EarlyGroups(pl.Callback):
    """The fractions of zero-std and of all-fail reward groups over the first 20% of a run of ``steps``
    optimizer steps (NaN until then, and for modules without group counts, such as SFT)."""

    def __init__(self, steps: int) -> None:
        self.at = max(1, round(0.2 * steps))
        self.zero_std_early = self.all_fail_early = float("nan")
        self._groups = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        counts = getattr(pl_module, "counts", None)  # GRPO only
        if counts is None or not math.isnan(self.zero_std_early):
            return
        self._groups += len(batch)
        if trainer.global_step >= self.at:
            self.zero_std_early = counts["zero_std_groups"] / self._groups
            self.all_fail_early = counts["all_fail_groups"] / self._groups


class _Recorder(EarlyGroups):
    """Per-step τ and window statistics, the zero-std and all-fail group fractions at 20% of the run, and the
    test split's per-image IoUs."""

    def __init__(self, steps: int) -> None:
        super().__init__(steps)
        self.taus: list[float] = []
        self.window: dict[str, list[float]] = {"hit_rate": [], "reward_std": [], "iou_margin": []}
        self.test_ious: list[float] = []

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self.test_ious.extend(float(v) for v in outputs["samples"]["ious"].tolist())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.taus.append(float(getattr(pl_module, "iou_threshold", float("nan"))))
        curriculum = ThresholdCurriculumCallback.find(trainer)
        stats = curriculum.schedule.stats if curriculum else {}
        for key, values in self.window.items():
            values.append(float(stats.get(key, float("nan"))))


def run(method: str | Method, data: pl.LightningDataModule, steps: int = 600, seed: int = 0, *,
        init: str | None = None, policy_kwargs: dict[str, Any] | None = None, num_generations: int = 8,
        learning_rate: float = 2e-3, temperature: float = 1.0, val_every: int | None = None,
        log_dir: str | None = None, regime: str = "random_init", return_policy: bool = False,
        data_seed: int | None = None) -> LabResult:
    """Train BoxPolicy with ``method`` for ``steps`` optimizer steps on ``data``, then test it.

    ``init`` is a BoxPolicy export to start from (the prior regime); without it the policy starts from random
    weights seeded by ``seed``. ``regime`` only labels the result.

    A seed sets everything random in the run: the training order (``data.seed`` for this run, restored
    afterwards), GRPO's sampling and, without ``init``, the initial weights. Every method takes the same seeds,
    so runs of one seed pair across methods. ``data_seed`` sets the training order apart from ``seed``.
    The test split's per-image IoUs are kept (``test_ious``) for paired comparisons.
    """
    from medloc_lightning.policies.box import BoxPolicy

    spec = method if isinstance(method, Method) else load_method(method)
    pl.seed_everything(seed, verbose=False)
    policy = BoxPolicy.from_export(init) if init else BoxPolicy(seed=seed, **(policy_kwargs or {}))
    callbacks: list[pl.Callback] = []
    schedule = spec.build_schedule()
    if spec.module == "sft":
        module: pl.LightningModule = SFTGroundingModule(policy, learning_rate=learning_rate)
    else:
        reward = GroundingReward(**{**spec.reward, "format_weight": 0.0})
        module = GRPOGroundingModule(policy, num_generations=num_generations, temperature=temperature, reward=reward,
                                     learning_rate=learning_rate, micro_batch_size=1024, seed=seed)
    if schedule is not None:
        callbacks.append(ThresholdCurriculumCallback(schedule, prog_bar=False))
    recorder = _Recorder(steps)
    callbacks.append(recorder)
    logger: Any = False
    if log_dir is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(log_dir, name=f"{spec.name}_seed{seed}")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=logger, callbacks=callbacks,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, val_check_interval=val_every or steps,
                         check_val_every_n_epoch=None, limit_val_batches=1.0 if val_every else 0.0,
                         log_every_n_steps=50, deterministic=False)
    kept_seed = getattr(data, "seed", None)
    if data_seed is not None and kept_seed is None:
        raise ConfigError(f"data_seed={data_seed} needs a DataModule with a `seed` (its training order)")
    if kept_seed is not None:
        data_seed = seed if data_seed is None else data_seed
        data.seed = data_seed
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, data)
            test = trainer.test(module, data, verbose=False)[0]
    finally:
        if kept_seed is not None:
            data.seed = kept_seed
    wall = time.perf_counter() - start
    return LabResult(
        method=spec.name, seed=seed, steps=trainer.global_step, regime=regime,
        test={k.removeprefix("test/"): float(v) for k, v in test.items()},
        val={k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        zero_std_early=recorder.zero_std_early, all_fail_early=recorder.all_fail_early,
        num_raises=0 if schedule is None else schedule.num_raises,
        final_tau=float("nan") if schedule is None else schedule.tau,
        wall_s=wall, taus=recorder.taus, hit_rates=recorder.window["hit_rate"],
        reward_stds=recorder.window["reward_std"], iou_margins=recorder.window["iou_margin"],
        test_ious=recorder.test_ious, policy=policy.eval() if return_policy else None,
    )


def lab_data(root: str, n: int = 1200, size: int = 128, seed: int = 0, preset: str = "lab",
             batch_size: int = 8) -> pl.LightningDataModule:
    """The lab's synthetic data (mixed modalities), generated once into ``root`` and cached in memory."""
    from medloc_lightning.data import SyntheticDataModule

    torch.set_num_threads(1)
    return SyntheticDataModule(root=root, n=n, size=size, synth_seed=seed, preset=preset, batch_size=batch_size,
                               cache_images=True, seed=seed, workers=1)
