"""Run by tests/callbacks/test_curriculum.py: 2-process DDP (gloo, CPU) with 2 micro-batches per optimizer step and
a checkpoint at every validation (every 3 batches, so steps 1, 4 and 7 are saved between micro-batches).

Usage: ddp_curriculum_resume.py OUT WINDOW_UNIT [CKPT]. Each rank dumps the schedule's state after every step.
"""
import json
import sys
from pathlib import Path

import torch

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from toy_modules import IndexedModule, StateTrace, dummy_loader

from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.curriculum import ThresholdCurriculum


def main(out: Path, window_unit: str, ckpt_path: str | None) -> None:
    torch.set_num_threads(1)
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=4, window_unit=window_unit))
    trace = StateTrace(cb)
    saver = ModelCheckpoint(dirpath=out / "ckpt", save_top_k=-1, filename="{step}")
    rows = 2 if window_unit == "group" else 1  # group: 2 prompt groups of 3 IoUs per batch
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=10, accumulate_grad_batches=2,
                         val_check_interval=3, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                         callbacks=[cb, trace, saver], enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=out)
    trainer.fit(IndexedModule(rows=rows, n=20 * rows), dummy_loader(40), dummy_loader(2), ckpt_path=ckpt_path,
                weights_only=True if ckpt_path else None)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"states": trace.states}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
