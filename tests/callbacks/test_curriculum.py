"""ThresholdCurriculumCallback in real CPU Trainers: contract, accumulation, logging, resume, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.curriculum import CurriculumMismatchError, FixedThreshold, ProgressSchedule, ThresholdCurriculum

from toy_modules import (GaussianBoxRL, IndexedModule, ScriptedIoUs, ScriptedModule, StateTrace, dummy_loader,
                         scripted_loader)


def trainer(tmp_path, max_steps, callbacks, **kw):
    kw.setdefault("logger", False)
    return pl.Trainer(
        default_root_dir=tmp_path, max_steps=max_steps, accelerator="cpu", devices=1, callbacks=callbacks,
        enable_checkpointing=kw.pop("enable_checkpointing", False), enable_progress_bar=False,
        enable_model_summary=False, **kw,
    )


def test_attribute_is_set_before_the_first_step_and_after_every_update(tmp_path):
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=4))
    module = ScriptedModule()
    trainer(tmp_path, 24, [cb]).fit(module, scripted_loader(24))
    assert module.seen_taus[0] == 0.3  # not the module's own 0.99
    assert cb.schedule.num_raises >= 2  # the ramped IoUs raise tau
    # every step after a raise already used the raised tau
    expected, tau = [], 0.3
    events = {int(e["step"]): e["tau"] for e in cb.schedule.events}
    for step in range(24):
        expected.append(tau)
        tau = events.get(step + 1, tau)
    assert module.seen_taus == expected
    assert module.iou_threshold == cb.schedule.tau


def test_observes_once_per_optimizer_step_with_gradient_accumulation(tmp_path):
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=3))
    trainer(tmp_path, 6, [cb], accumulate_grad_batches=3).fit(ScriptedModule(), scripted_loader(18, per_item=2))
    ref = ThresholdCurriculum(window=3)
    items = ScriptedIoUs(18, 2).items
    for k in range(6):
        ref.observe(torch.cat(items[3 * k: 3 * k + 3]))
    assert cb.schedule.num_steps == 6
    assert cb.schedule.stats == ref.stats and cb.schedule.events == ref.events


def test_logs_tau_and_window_statistics(tmp_path):
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=2))
    t = trainer(tmp_path, 4, [cb])
    t.fit(ScriptedModule(), scripted_loader(4))
    for key in ("tau", "hit_rate", "reward_std", "iou_margin", "raised", "num_raises"):
        assert f"curriculum/{key}" in t.logged_metrics
    assert "curriculum/tau" in t.progress_bar_metrics
    assert float(t.logged_metrics["curriculum/tau"]) == pytest.approx(cb.schedule.tau)


def test_training_step_without_ious_fails_clearly(tmp_path):
    class NoIoUs(ScriptedModule):
        def training_step(self, batch, batch_idx):
            return {"loss": super().training_step(batch, batch_idx)["loss"]}

    with pytest.raises(KeyError, match="ious"):
        trainer(tmp_path, 2, [ThresholdCurriculumCallback()]).fit(NoIoUs(), scripted_loader(2))


def test_progress_schedule_receives_training_progress(tmp_path):
    cb = ThresholdCurriculumCallback(ProgressSchedule([(0.5, 0.2), (1.0, 0.7)]))
    module = ScriptedModule()
    trainer(tmp_path, 10, [cb]).fit(module, scripted_loader(10))
    # step s runs with tau(progress = s/10), as V-Triune's step/total: steps 0..5 (progress <= 0.5) use 0.2
    assert module.seen_taus == [0.2] * 6 + [0.7] * 4


def test_a_toy_rl_learner_climbs_the_curriculum(tmp_path):
    torch.manual_seed(0)
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=10))
    trainer(tmp_path, 150, [cb]).fit(GaussianBoxRL(), dummy_loader(150))
    assert cb.schedule.tau >= 0.55, cb.schedule.stats


def _fit(root, steps, ckpt_path=None):
    torch.manual_seed(0)
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=4))
    saver = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=6, save_top_k=-1, filename="{step}")
    module = ScriptedModule()
    t = trainer(root, steps, [cb, saver], enable_checkpointing=True)
    # 6 batches per epoch: the step-6 checkpoint sits on an epoch boundary, where a plain DataLoader resumes
    # in order (mid-epoch data resumption is the DataModule's job, tested there)
    t.fit(module, scripted_loader(6), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return cb, module


def test_checkpoint_resume_continues_exactly(tmp_path):
    full_cb, full = _fit(tmp_path / "full", 12)
    ckpt_path = tmp_path / "full" / "ckpt" / "step=6.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)  # our state is plain containers and tensors
    assert any("ThresholdCurriculumCallback" in k for k in ckpt["callbacks"])
    resumed_cb, resumed = _fit(tmp_path / "resumed", 12, ckpt_path=ckpt_path)
    assert full_cb.schedule.num_raises >= 2
    assert resumed.seen_taus == full.seen_taus[6:]  # the first resumed step already sees the restored tau
    assert resumed.seen_taus[0] == 0.45
    assert resumed_cb.schedule.state_dict() == full_cb.schedule.state_dict()
    assert torch.equal(resumed.w, full.w)


def _fit_accumulating(root, ckpt_path=None):
    # 2 micro-batches per optimizer step, validation (and so a checkpoint) every 3: steps 1, 4, 7 are saved
    # between the two micro-batches of a step, with IoUs pending
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=3))
    trace = StateTrace(cb)
    saver = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, filename="{step}")
    t = trainer(root, 10, [cb, trace, saver], enable_checkpointing=True, accumulate_grad_batches=2,
                val_check_interval=3, limit_val_batches=1, num_sanity_val_steps=0)
    t.fit(IndexedModule(), dummy_loader(20), dummy_loader(1), ckpt_path=ckpt_path,
          weights_only=True if ckpt_path else None)
    return trace.states


def _saved_mid_accumulation(ckpt_path, accumulate=2):
    progress = torch.load(ckpt_path, weights_only=True)["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    return progress["current"]["processed"] % accumulate != 0


def test_resume_between_micro_batches_continues_exactly(tmp_path):
    full = _fit_accumulating(tmp_path / "full")
    ckpt_path = tmp_path / "full" / "ckpt" / "step=4.ckpt"
    assert _saved_mid_accumulation(ckpt_path)
    resumed = _fit_accumulating(tmp_path / "resumed", ckpt_path)
    assert len(full) == 10 and full[-1]["num_raises"] >= 1
    assert resumed == full[4:]  # the schedule's whole state after each of steps 5..10


def _resume(root, schedule, ckpt_path, **kw):
    cb = ThresholdCurriculumCallback(schedule, **kw)
    module = ScriptedModule()
    trainer(root, 12, [cb]).fit(module, scripted_loader(6), ckpt_path=ckpt_path, weights_only=True)
    return module


def test_resuming_under_another_schedule_fails_unless_reset_is_asked_for(tmp_path):
    _fit(tmp_path / "full", 12)
    ckpt_path = tmp_path / "full" / "ckpt" / "step=6.ckpt"
    with pytest.raises(CurriculumMismatchError, match="saved by a ThresholdCurriculum, the configured schedule is a "
                                                      "FixedThreshold"):
        _resume(tmp_path / "a", FixedThreshold(0.5, window=4), ckpt_path)
    with pytest.raises(CurriculumMismatchError, match="tau_target: saved 0.8, configured 0.5"):
        _resume(tmp_path / "b", ThresholdCurriculum(window=4, tau_target=0.5), ckpt_path)
    with pytest.warns(UserWarning, match="reset_on_mismatch=True: the configured schedule starts afresh at tau = 0.5"):
        module = _resume(tmp_path / "c", FixedThreshold(0.5, window=4), ckpt_path, reset_on_mismatch=True)
    assert module.seen_taus == [0.5] * 6


def test_fixed_threshold_baseline_plugs_in(tmp_path):
    cb = ThresholdCurriculumCallback(FixedThreshold(0.5))
    module = ScriptedModule()
    trainer(tmp_path, 5, [cb]).fit(module, scripted_loader(5))
    assert module.seen_taus == [0.5] * 5


def _run_two_ranks(tmp_path, script, *args):
    """Run ``tests/scripts/<script>`` in 2 DDP processes (gloo, CPU); each rank's JSON dump."""
    tests, root = Path(__file__).parents[1], Path(__file__).parents[2]  # toy_modules, and this checkout's package
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tests), str(root)])}
    proc = subprocess.run([sys.executable, str(tests / "scripts" / script), str(tmp_path), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("window_unit", ["step", "group"])
def test_ddp_two_processes_share_tau(tmp_path, window_unit):
    ranks = _run_two_ranks(tmp_path, "ddp_curriculum.py", window_unit)
    assert ranks[0]["local"] != ranks[1]["local"]  # the ranks saw different data...
    assert ranks[0]["taus"] == ranks[1]["taus"]  # ...yet hold the same tau at every step
    assert ranks[0]["state"] == ranks[1]["state"]
    ref = ThresholdCurriculum(window=4, window_unit=window_unit)  # the tau of the rank-ordered gathered stream
    for a, b in zip(ranks[0]["local"], ranks[1]["local"]):
        ref.observe(a + b)  # per step: rank 0's groups, then rank 1's (each group whole)
    assert ref.state_dict()["entries"] == ranks[0]["state"]["entries"] and ref.tau == ranks[0]["taus"][-1]
    assert ref.num_raises >= 1
    if window_unit == "group":
        assert all(len(entry) == 3 for entry in ranks[0]["state"]["entries"])  # whole groups of 3, never split


@pytest.mark.slow
def test_ddp_a_rank_without_groups_still_shares_tau(tmp_path):
    # rank 1 returns IoUs of shape [0, 3] on every other step (all its prompts rejected): no groups to gather
    ranks = _run_two_ranks(tmp_path, "ddp_curriculum.py", "group", "--empty-rank")
    assert [] in ranks[1]["local"] and [] not in ranks[0]["local"]
    assert ranks[0]["taus"] == ranks[1]["taus"] and ranks[0]["state"] == ranks[1]["state"]
    ref = ThresholdCurriculum(window=4, window_unit="group")
    for a, b in zip(ranks[0]["local"], ranks[1]["local"]):
        ref.observe(a + b)
    assert ref.state_dict() == ranks[0]["state"] and ref.num_raises >= 1


@pytest.mark.slow
@pytest.mark.parametrize("window_unit", ["step", "group"])
def test_ddp_resume_between_micro_batches_continues_exactly_on_every_rank(tmp_path, window_unit):
    # each rank holds its own pending IoUs at the checkpoint; the resumed ranks must go on as the full run did
    full = _run_two_ranks(tmp_path / "full", "ddp_curriculum_resume.py", window_unit)
    ckpt_path = tmp_path / "full" / "ckpt" / "step=4.ckpt"
    assert _saved_mid_accumulation(ckpt_path)
    resumed = _run_two_ranks(tmp_path / "resumed", "ddp_curriculum_resume.py", window_unit, str(ckpt_path))
    assert full[0]["states"] == full[1]["states"] and len(full[0]["states"]) == 10
    assert full[0]["states"][-1]["num_raises"] >= 1
    assert resumed[0]["states"] == resumed[1]["states"] == full[0]["states"][4:]


def test_group_unit_observes_each_steps_rows_as_groups(tmp_path):
    # batches of 2 items x 4 IoUs, accumulated over 2 micro-batches: 4 groups per optimizer step
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=6, window_unit="group"))
    trainer(tmp_path, 6, [cb], accumulate_grad_batches=2).fit(ScriptedModule(), scripted_loader(24, batch_size=2))
    ref = ThresholdCurriculum(window=6, window_unit="group")
    items = ScriptedIoUs(24, 4).items
    for k in range(6):
        ref.observe(torch.stack(items[4 * k: 4 * k + 4]))
    assert cb.schedule.num_steps == 6 and cb.schedule.num_raises >= 1
    assert cb.schedule.state_dict() == ref.state_dict()


def test_grpo_module_feeds_one_group_per_prompt(tmp_path):
    from medloc_lightning.module import GRPOGroundingModule

    from toy_modules import ScriptedPolicy, record_loader, square_records

    answers = ['<answer>{"bbox_2d": [0, 0, 10, 10]}</answer>', "<answer>[0, 0, 5, 10]</answer>", "none"]
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=30, window_unit="group"))
    module = GRPOGroundingModule(ScriptedPolicy(answers), num_generations=3, learning_rate=1e-3)
    with pytest.warns(UserWarning, match="without a parseable box"):  # "none" is counted, and warned about once
        trainer(tmp_path, 2, [cb]).fit(module, record_loader(square_records(6), 3))
    state = cb.schedule.state_dict()
    assert len(state["entries"]) == 6  # 2 steps x 3 prompts, each its G = 3 IoUs
    assert state["entries"][0] == pytest.approx([1.0, 0.5, 0.0])
