"""CurriculumPlotCallback in a real Trainer: one point per optimizer step, raises at the right steps, a PNG whose
panels carry P_τ, S_τ and Δ."""
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.callbacks import curriculum_plot
from medloc_lightning.callbacks.curriculum_plot import CurriculumPlotCallback
from medloc_lightning.curriculum import FixedThreshold, ThresholdCurriculum

from toy_modules import ScriptedModule, scripted_loader


def fit(tmp_path, callbacks, steps):
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=CSVLogger(tmp_path), callbacks=callbacks,
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(ScriptedModule(), scripted_loader(steps))
    return trainer


@pytest.fixture
def figures(monkeypatch):
    """The figures the callback draws (the real plot_curves, its result kept for inspection)."""
    drawn = []

    def keep(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    real = curriculum_plot.plot_curves
    monkeypatch.setattr(curriculum_plot, "plot_curves", keep)
    return drawn


def test_plot_records_every_step_and_marks_raises(tmp_path, figures):
    curriculum = ThresholdCurriculumCallback(ThresholdCurriculum(window=4))
    plot = CurriculumPlotCallback()
    trainer = fit(tmp_path, [plot, curriculum], 24)
    assert plot.path == Path(trainer.log_dir) / "curriculum.png"
    with Image.open(plot.path) as image:
        assert image.format == "PNG" and image.width > 400
    data = json.loads(plot.path.with_suffix(".json").read_text())
    assert data["step"] == list(range(1, 25))  # after each of the 24 optimizer steps
    assert data["tau"][-1] == curriculum.schedule.tau
    # the plotted raise steps are the global steps after which tau changed
    changed = [s for s, prev, cur in zip(data["step"][1:], data["tau"], data["tau"][1:]) if cur != prev]
    assert data["events"] == changed and len(changed) == curriculum.schedule.num_raises >= 2
    # P_τ and S_τ follow τ (linear in τ between their pairs); Δ is constant
    schedule = curriculum.schedule
    for tau, p_tau, s_tau in zip(data["tau"], data["min_hit_rate"], data["max_reward_std"]):
        progress = (tau - schedule.tau_start) / (schedule.tau_target - schedule.tau_start)
        assert p_tau == pytest.approx(0.8 + (0.6 - 0.8) * progress)
        assert s_tau == pytest.approx(0.10 + (0.20 - 0.10) * progress)
    assert set(data["min_margin"]) == {0.1}

    [fig] = figures
    tau_ax, hit_ax, std_ax, margin_ax = fig.axes
    thresholds = {ax: [line for line in ax.get_lines() if line.get_linestyle() == "--"]
                  for ax in (hit_ax, std_ax, margin_ax)}
    assert list(thresholds[hit_ax][0].get_ydata()) == data["min_hit_rate"]
    assert list(thresholds[std_ax][0].get_ydata()) == data["max_reward_std"]
    assert list(thresholds[margin_ax][0].get_ydata()) == [0.1, 0.1]
    assert all(line.get_drawstyle() == "steps-post" for line in (thresholds[hit_ax][0], thresholds[std_ax][0]))
    [raises] = [line for line in tau_ax.get_lines() if line.get_marker() == "^"]
    assert list(raises.get_xdata()) == data["events"]
    assert f"{schedule.num_raises} raise(s)" in fig.get_suptitle()


def test_disabled_checks_and_baselines_draw_no_thresholds(tmp_path, figures):
    no_margin = ThresholdCurriculumCallback(ThresholdCurriculum(window=4, checks=("accuracy", "stability")))
    fit(tmp_path / "a", [CurriculumPlotCallback(), no_margin], 8)
    fit(tmp_path / "b", [CurriculumPlotCallback(), ThresholdCurriculumCallback(FixedThreshold(0.5, window=4))], 8)
    def dashed(ax):
        return [line for line in ax.get_lines() if line.get_linestyle() == "--"]

    curriculum, fixed = figures
    assert [len(dashed(ax)) for ax in curriculum.axes] == [1, 1, 1, 0]  # τ target, P_τ, S_τ; no Δ
    assert [len(dashed(ax)) for ax in fixed.axes] == [0, 0, 0, 0]


def test_plot_without_a_curriculum_is_a_no_op(tmp_path):
    plot = CurriculumPlotCallback()
    fit(tmp_path, [plot], 2)
    assert plot.path is None
