"""The recipe of the shipped ``medloc:tiny-qwen2.5-vl-grounding`` checkpoint: a random tiny Qwen2.5-VL trained by
SFT on large, high-contrast synthetic structures (the ``easy`` preset), kept at its best source-validation mIoU
and reported on harder target presets. ``python -m medloc_lightning.prior --out DIR`` runs it (``--help``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from medloc_lightning.lab.report import grounding_report, json_ready, load_split, train_boxes
from medloc_lightning.prior import PRIOR_DIMS, PRIOR_PROMPT_TEMPLATE, REPORT_FILE, warm_start


def _eval_batch_size(records: int, largest: int = 32) -> int:
    """The largest batch size up to ``largest`` that divides ``records``, so that whole batches cover exactly
    ``records`` validation records."""
    return max(b for b in range(1, min(largest, records) + 1) if records % b == 0)


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
