"""CurriculumPlotCallback in a real Trainer: one point per optimizer step, raises at the right steps, a PNG."""
import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.curriculum import ThresholdCurriculum
from medloc_lightning.callbacks.curriculum_plot import CurriculumPlotCallback

from toy_modules import ScriptedModule, scripted_loader


def test_plot_records_every_step_and_marks_raises(tmp_path):
    curriculum = ThresholdCurriculumCallback(ThresholdCurriculum(window=4))
    plot = CurriculumPlotCallback()
    trainer = pl.Trainer(accelerator="cpu", max_steps=24, logger=CSVLogger(tmp_path), callbacks=[plot, curriculum],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(ScriptedModule(), scripted_loader(24))
    assert plot.path == Path(trainer.log_dir) / "curriculum.png"
    image = Image.open(plot.path)
    assert image.format == "PNG" and image.width > 400
    data = json.loads(plot.path.with_suffix(".json").read_text())
    assert data["step"] == list(range(1, 25))  # after each of the 24 optimizer steps
    assert data["tau"][-1] == curriculum.schedule.tau
    # the plotted raise steps are the global steps after which tau changed
    changed = [s for s, prev, cur in zip(data["step"][1:], data["tau"], data["tau"][1:]) if cur != prev]
    assert data["events"] == changed and len(changed) == curriculum.schedule.num_raises >= 2


def test_plot_without_a_curriculum_is_a_no_op(tmp_path):
    plot = CurriculumPlotCallback()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=CSVLogger(tmp_path), callbacks=[plot],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(ScriptedModule(), scripted_loader(2))
    assert plot.path is None
