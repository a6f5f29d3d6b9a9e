"""total_optimizer_steps: the length of a run in optimizer steps, as LR schedules and progress see it."""
from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest

from medloc_lightning.lightning_utils import total_optimizer_steps

from toy_modules import ScriptedModule, scripted_loader


class Measure(pl.Callback):
    """Reads total_optimizer_steps at the start of training for a few μ, then stops the run."""

    def __init__(self) -> None:
        self.totals: dict[int, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.totals = {mu: total_optimizer_steps(trainer, mu) for mu in (1, 3)}
        trainer.should_stop = True


@pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\)")  # Lightning 2.6 on torch 2.13, not ours
@pytest.mark.parametrize("trainer_kwargs,expected", [
    ({"max_epochs": 2}, {1: 10, 3: 30}),  # 5 batches x 2 epochs, times mu
    ({"max_epochs": 2, "max_steps": 12}, {1: 10, 3: 12}),  # max_steps counts optimizer steps
    ({"max_epochs": 2, "accumulate_grad_batches": 2}, {1: 6, 3: 18}),  # ceil(5 / 2) per epoch
    ({"max_epochs": -1, "max_steps": 7}, {1: 7, 3: 7}),
    ({"max_epochs": -1, "max_steps": -1}, {1: math.inf, 3: math.inf}),
])
def test_total_optimizer_steps(tmp_path, trainer_kwargs, expected) -> None:
    measure = Measure()
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[measure], **trainer_kwargs)
    trainer.fit(ScriptedModule(), scripted_loader(5))
    assert measure.totals == expected
