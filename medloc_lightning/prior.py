"""Grounding priors: a policy warm-started by SFT on a *source* distribution, then judged on a *target*.

MedLoc-R1 starts GRPO from Qwen2.5-VL, which already grounds natural images but rarely reaches IoU 0.5 on
medical ones. Offline, with no pretrained weights, we rebuild that regime: supervised training on an easier
source set (here: large, high-contrast synthetic structures) gives a prior that finds the target roughly and
boxes it loosely on a harder target set (smaller, fainter structures). Both the Qwen2.5-VL path and the
curriculum lab's BoxPolicy use `warm_start`; `build_qwen_grounding_prior` is the recipe of the shipped
``medloc:tiny-qwen2.5-vl-grounding`` checkpoint::

    python -m medloc_lightning.prior --out medloc_lightning/pretrained/tiny-qwen2.5-vl-grounding

`grounding_report` is the yardstick: greedy Acc@τ, mIoU and parse rate, the correlation of predicted and
true box centres, and the same metrics for the image-blind baseline that always answers the median
training box.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medloc_lightning.checkpointing.loading import load_checkpoint

PRIOR_PROMPT_TEMPLATE = "{query} Output the final answer in <answer> </answer> tags in JSON format."
"""The prior's prompt: the VLM-R1 answer format without the request to think first (SFT answers hold no
``<think>`` block, and a tiny model has nothing to reason with)."""

PRIOR_DIMS: dict[str, int] = {"hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "vision_hidden": 64,
                              "vision_depth": 2, "vision_heads": 2}
"""The shipped prior's architecture (`build_tiny_qwen2_5_vl` arguments): ``python -m medloc_lightning.prior``'s
defaults."""

REPORT_FILE = "medloc_prior.json"
"""Written next to a built prior: the recipe's arguments and what the prior scored."""


def warm_start(module: Any, data: Any, *, max_steps: int, max_minutes: float | None = None,
               val_every: int = 500, limit_val_batches: int | float = 1.0, monitor: str = "val/miou",
               root: str | os.PathLike | None = None, log: bool = True) -> dict[str, Any]:
    """Train ``module`` (an `SFTGroundingModule`) on ``data`` and load back its best weights by ``monitor``.

    Validation runs every ``val_every`` optimizer steps and at the end. Training stops at ``max_steps`` or
    after ``max_minutes``, whichever comes first. Returns the best score, its step, the steps run and every
    validation score by step.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    root = Path(root) if root is not None else Path(os.environ.get("TMPDIR", "/tmp")) / "medloc-warm-start"
    scores: dict[int, float] = {}

    class _Scores(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            if monitor in trainer.callback_metrics:
                scores[int(trainer.global_step)] = float(trainer.callback_metrics[monitor])

    saver = ModelCheckpoint(dirpath=root / "checkpoints", monitor=monitor, mode="max", save_top_k=1,
                            filename="best-{step}", save_last=False, enable_version_counter=False)
    logger: Any = False
    if log:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(root), name="log")
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps,
        max_time=None if max_minutes is None else {"minutes": float(max_minutes)},
        val_check_interval=val_every, check_val_every_n_epoch=None, limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0, callbacks=[saver, _Scores()], logger=logger, log_every_n_steps=min(50, max_steps),
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, data)
        best, score = saver.best_model_path, saver.best_model_score
        score = None if score is None else float(score)
        if trainer.global_step % val_every:  # the last weights were not scored: score them too
            last = scores[trainer.global_step] = float(trainer.validate(module, data, verbose=False)[0][monitor])
            if score is None or last > score:
                best, score = str(root / "checkpoints" / f"best-step={trainer.global_step}.ckpt"), last
                trainer.save_checkpoint(best)
    if best:
        checkpoint = load_checkpoint(best)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    return {"best_score": score, "monitor": monitor, "best_checkpoint": best, "best_step": _step_of(best),
            "steps": int(trainer.global_step), "scores": scores}


def _step_of(path: str) -> int | None:
    stem = Path(path).stem if path else ""
    return int(stem.split("step=")[-1]) if "step=" in stem else None


def centre_correlation(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Pearson correlation of predicted and true box centres in x and in y, over rows with a parsed box."""
    ok = ~torch.isnan(pred).any(1)
    if int(ok.sum()) < 3:
        return math.nan, math.nan
    p, t = pred[ok].double(), target[ok].double()
    out = []
    for lo, hi in ((0, 2), (1, 3)):
        a, b = ((p[:, lo] + p[:, hi]) / 2).numpy(), ((t[:, lo] + t[:, hi]) / 2).numpy()
        out.append(float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan)
    return out[0], out[1]


def _metrics(pred: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float]) -> dict[str, float]:
    from medloc_lightning.metrics import GroundingMetrics

    metric = GroundingMetrics(thresholds=thresholds)
    metric.update(pred.double(), target.double())
    out = {k: float(v) for k, v in metric.compute().items()}
    out["centre_corr_x"], out["centre_corr_y"] = centre_correlation(pred, target)
    return out


def grounding_report(policy: Any, records: Sequence[dict], train_gt: torch.Tensor, batch_size: int = 32,
                     thresholds: Sequence[float] = (0.3,)) -> dict[str, dict[str, float]]:
    """Greedy metrics of ``policy`` on ``records`` beside those of always answering the median of
    ``train_gt`` ([N, 4] training boxes: the baseline that ignores the image)."""
    from medloc_lightning.policies.base import gt_boxes

    target = gt_boxes(records)
    preds = []
    was_training = policy.training
    policy.eval()
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            preds.append(policy.predict(records[start:start + batch_size])[1].cpu().float())
    policy.train(was_training)
    median = train_gt.float().median(0).values.expand_as(target).clone()
    return {"policy": _metrics(torch.cat(preds), target, thresholds),
            "median_box": _metrics(median, target, thresholds), "rows": {"n": float(len(records))}}


def load_split(data: Any, split: str, limit: int | None = None) -> list[dict]:
    """The records of one split of a DataModule (images decoded), in file order: all of them, or the first
    ``limit`` (only those are decoded)."""
    data.prepare_data()
    data.setup("test" if split == "test" else ("validate" if split == "val" else "fit"))
    dataset = data.datasets[split]
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return [dataset[i] for i in range(count)]


def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (``null`` in JSON), in nested dicts and lists:
    a correlation undefined on constant boxes, for instance, is written as ``null`` rather than as ``NaN``,
    which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _eval_batch_size(records: int, largest: int = 32) -> int:
    """The largest batch size up to ``largest`` that divides ``records``, so that whole batches cover exactly
    ``records`` validation records."""
    return max(b for b in range(1, min(largest, records) + 1) if records % b == 0)


def train_boxes(data: Any) -> torch.Tensor:
    """[N, 4] ground-truth boxes of a DataModule's training split (for the median-box baseline)."""
    data.prepare_data()
    data.setup("fit")
    table = data.datasets["train"].table
    return torch.tensor(table["bbox"], dtype=torch.float32).reshape(-1, 4)


def build_qwen_grounding_prior(
    out_dir: str | os.PathLike,
    *,
    work_dir: str | os.PathLike = "runs/grounding_prior",
    dims: dict[str, int] | None = None,
    size: int = 84,
    source_preset: str = "easy",
    target_presets: Sequence[str] = ("small", "lab", "single"),
    n_source: int = 40000,
    n_target: int = 2000,
    synth_seed: int = 0,
    target_seed: int = 1,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    warmup_steps: int = 200,
    max_steps: int = 16000,
    max_minutes: float | None = None,
    val_every: int = 1000,
    val_records: int = 200,
    max_new_tokens: int = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """Build a random tiny Qwen2.5-VL (``dims``), SFT it on the ``source_preset`` synthetic set at ``size`` px,
    keep the best weights by source-validation mIoU, export them to ``out_dir`` and report the prior on the
    validation split of each target preset. Returns (and writes to ``out_dir/medloc_prior.json``) the report.
    """
    import lightning.pytorch as pl

    from medloc_lightning.data import SyntheticDataModule
    from medloc_lightning.module import SFTGroundingModule
    from medloc_lightning.policies.qwen import QwenVLPolicy
    from medloc_lightning.policies.qwen.tiny import build_tiny_qwen2_5_vl

    started = time.time()
    work, out = Path(work_dir), Path(out_dir)
    pixels = size * size
    dims = {"min_pixels": pixels, "max_pixels": pixels, **(dims or {})}
    recipe = {k: v for k, v in locals().items()
              if k in ("size", "source_preset", "target_presets", "n_source", "n_target", "synth_seed", "target_seed",
                       "batch_size", "learning_rate", "warmup_steps", "max_steps", "max_minutes", "val_every",
                       "val_records", "max_new_tokens", "seed")}
    recipe["dims"] = dims
    recipe["target_presets"] = list(target_presets)
    pl.seed_everything(seed, verbose=False)
    init = build_tiny_qwen2_5_vl(work / "init", **dims)
    policy = QwenVLPolicy(str(init), min_pixels=pixels, max_pixels=pixels, prompt_template=PRIOR_PROMPT_TEMPLATE,
                          max_new_tokens=max_new_tokens, freeze_vision=False)
    eval_batch = _eval_batch_size(val_records)  # validation scores exactly the first val_records records
    source = SyntheticDataModule(root=str(work / f"source_{source_preset}_{size}"), n=n_source, size=size,
                                 preset=source_preset, synth_seed=synth_seed, batch_size=batch_size,
                                 eval_batch_size=eval_batch, cache_images=True, seed=seed)
    module = SFTGroundingModule(policy, learning_rate=learning_rate, warmup_steps=warmup_steps,
                                lr_schedule="cosine", max_grad_norm=1.0)
    fit = warm_start(module, source, max_steps=max_steps, max_minutes=max_minutes, val_every=val_every,
                     limit_val_batches=val_records // eval_batch, root=work / "sft")
    if out.exists():
        shutil.rmtree(out)
    policy.export(str(out))
    report: dict[str, Any] = {"recipe": recipe, "fit": {k: v for k, v in fit.items() if k != "best_checkpoint"},
                              "source_val": grounding_report(policy, load_split(source, "val", limit=val_records),
                                                           train_boxes(source))}
    for preset in target_presets:
        target = SyntheticDataModule(root=str(work / f"target_{preset}_{size}"), n=n_target, size=size,
                                     preset=preset, synth_seed=target_seed, batch_size=batch_size,
                                     cache_images=True, seed=seed)
        report[f"target_{preset}_val"] = grounding_report(policy, load_split(target, "val"), train_boxes(target))
    report["wall_minutes"] = round((time.time() - started) / 60, 2)
    report = json_ready(report)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m medloc_lightning.prior --out DIR [...]``: build the tiny Qwen2.5-VL grounding prior."""
    from medloc_lightning.policies.qwen.tiny import add_dimension_arguments, dimensions_from_args

    parser = argparse.ArgumentParser(description="Build a tiny Qwen2.5-VL grounding prior by SFT on synthetic "
                                                 "source images, and report it on the target presets.")
    parser.add_argument("--out", required=True, help="folder for the exported model (HF format)")
    parser.add_argument("--work-dir", default="runs/grounding_prior", help="data, checkpoints and logs")
    parser.add_argument("--size", type=int, default=84, help="image side in pixels (a multiple of 28)")
    parser.add_argument("--source-preset", default="easy")
    parser.add_argument("--target-presets", nargs="+", default=["small", "lab", "single"])
    parser.add_argument("--n-source", type=int, default=40000)
    parser.add_argument("--n-target", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--max-steps", type=int, default=16000, help="SFT steps (the cosine schedule's length)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-clock cap of the SFT (the result then depends on the machine's speed)")
    parser.add_argument("--val-every", type=int, default=1000)
    parser.add_argument("--val-records", type=int, default=200, help="source validation records used")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--train-seed", type=int, default=0)
    add_dimension_arguments(parser, skip=("min_pixels", "max_pixels"))  # --size sets both
    parser.set_defaults(**PRIOR_DIMS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dims = dimensions_from_args(args)
    report = build_qwen_grounding_prior(
        args.out, work_dir=args.work_dir, dims=dims, size=args.size, source_preset=args.source_preset,
        target_presets=args.target_presets, n_source=args.n_source, n_target=args.n_target,
        batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        max_steps=args.max_steps, max_minutes=args.max_minutes, val_every=args.val_every,
        val_records=args.val_records, max_new_tokens=args.max_new_tokens, seed=args.train_seed)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
