"""Run by tests/callbacks/test_curriculum.py: 2-process DDP (gloo, CPU); each rank dumps what it saw and its curriculum.

Usage: ddp_curriculum.py OUT [WINDOW_UNIT] [--empty-rank]. With "group", each rank's step is 2 groups of 3 IoUs.
With --empty-rank, rank 1 returns no groups (IoUs of shape [0, 3]) on every other step, as a rank whose prompts
were all rejected does.
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
    def __init__(self, empty_rank: bool = False):
        super().__init__()
        self.local: list[list[float]] = []
        self.empty_rank = empty_rank

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if self.empty_rank and self.global_rank == 1 and batch_idx % 2:
            out["ious"] = batch.new_zeros(0, batch.shape[-1])
        self.local.append(out["ious"].tolist())
        return out


def main(out: Path, window_unit: str, empty_rank: bool = False) -> None:
    torch.set_num_threads(1)
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=4, window_unit=window_unit))
    module = Recording(empty_rank)
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
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "step", "--empty-rank" in sys.argv[3:])
