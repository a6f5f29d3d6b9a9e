"""StepProgressBar in a real Trainer (optimizer steps of max_steps across epochs, τ and reward, no v_num), and the
CLI's default choice of bar."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.callbacks import StepProgressBar
from medloc_lightning.cli import MedlocCLI, Trainer
from medloc_lightning.curriculum import FixedThreshold
from medloc_lightning.module import GRPOGroundingModule, GroundingModule
from toy_modules import ScriptedPolicy, record_loader, square_records

ANSWERS = ['<answer>{"bbox_2d": [0, 0, 10, 10]}</answer>', "<answer>[0, 0, 5, 10]</answer>", "no box", ""]
QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


def test_the_bar_counts_optimizer_steps_across_epochs_and_shows_tau_and_reward(tmp_path, capsys):
    bar = StepProgressBar()
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=5, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                         enable_model_summary=False, log_every_n_steps=1,
                         callbacks=[bar, ThresholdCurriculumCallback(FixedThreshold(0.5, window=2))])
    with pytest.warns(UserWarning):  # the scripted garbage completions are warned about once
        trainer.fit(module, record_loader(square_records(4), 2))  # 2 batches per epoch: 3 epochs
    assert trainer.current_epoch >= 2
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (5, 5)
    assert set(bar.get_metrics(trainer, module)) == {"tau", "reward"}
    shown = capsys.readouterr().out.replace("\r", "\n").splitlines()
    last = [line for line in shown if line.startswith("train")][-1]
    assert "5/5" in last and "tau=0.500" in last and "reward=" in last
    assert not any("Epoch" in line or "v_num" in line for line in shown)


def build(tmp_path, monkeypatch, *args):
    monkeypatch.chdir(tmp_path)
    return MedlocCLI(args=["--config", str(QUICKSTART), *args], run=False, trainer_class=Trainer,
                     model_class=GroundingModule, datamodule_class=pl.LightningDataModule, subclass_mode_model=True,
                     subclass_mode_data=True, auto_configure_optimizers=False).trainer


def test_the_cli_uses_it_unless_the_config_names_a_bar(tmp_path, monkeypatch):
    assert type(build(tmp_path, monkeypatch).progress_bar_callback) is StepProgressBar
    own = build(tmp_path, monkeypatch, "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar")
    assert type(own.progress_bar_callback) is TQDMProgressBar
    assert build(tmp_path, monkeypatch, "--trainer.enable_progress_bar=false").progress_bar_callback is None
