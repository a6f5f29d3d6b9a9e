"""Grounding priors: a policy warm-started by SFT to its best validation score (`warm_start`), and the shipped
tiny Qwen2.5-VL prior's prompt and architecture.

MedLoc-R1 starts GRPO from Qwen2.5-VL, which already grounds natural images but rarely reaches IoU 0.5 on
medical ones. Offline, with no pretrained weights, that regime is rebuilt by supervised training on an easier
source set, which gives a prior that finds a harder target roughly and boxes it loosely. The recipe of the shipped
``medloc:tiny-qwen2.5-vl-grounding`` checkpoint is `medloc_lightning.lab.qwen_prior`; this module's command runs
it::

    python -m medloc_lightning.prior --out medloc_lightning/pretrained/tiny-qwen2.5-vl-grounding
"""
from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

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


_MOVED = {"grounding_report": "medloc_lightning.lab.report", "centre_correlation": "medloc_lightning.lab.report",
          "json_ready": "medloc_lightning.lab.report", "load_split": "medloc_lightning.lab.report",
          "train_boxes": "medloc_lightning.lab.report", "build_qwen_grounding_prior": "medloc_lightning.lab.qwen_prior",
          "main": "medloc_lightning.lab.qwen_prior"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # the experiments' part of this module moved to the lab
        warnings.warn(f"medloc_lightning.prior.{name} moved to {_MOVED[name]}; the old import path will be removed in "
                      "the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'medloc_lightning.prior' has no attribute {name!r}")


if __name__ == "__main__":
    from medloc_lightning.lab.qwen_prior import main

    main()
