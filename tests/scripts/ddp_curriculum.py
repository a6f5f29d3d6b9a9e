"""Run by tests/callbacks/test_curriculum.py: 2-process DDP (gloo, CPU); each rank dumps what it saw and its curriculum.

Usage: ddp_curriculum.py OUT [WINDOW_UNIT]. With "group", each rank's step is 2 groups of 3 IoUs.
"""
import json
import sys
from pathlib import Path

import torch

import lightning.pytorch as pl

from toy_modules import ScriptedModule, ScriptedIoUs

from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.curriculum import ThresholdCurriculum


class Recording(ScriptedModule):
    def __init__(self):
        super().__init__()
        self.local: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.local.append(batch.tolist())
        return out


def main(out: Path, window_unit: str) -> None:
    torch.set_num_threads(1)
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=4, window_unit=window_unit))
    module = Recording()
    batch_size = 2 if window_unit == "group" else 1
    loader = torch.utils.data.DataLoader(ScriptedIoUs(n=24 * batch_size, per_item=3), batch_size=batch_size,
                                         shuffle=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=12, logger=False, callbacks=[cb],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=out)
    trainer.fit(module, loader)
    rank = trainer.global_rank
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"local": module.local, "taus": module.seen_taus + [cb.schedule.tau], "state": cb.schedule.state_dict()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "step")
