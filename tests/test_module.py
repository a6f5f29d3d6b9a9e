"""GRPOGroundingModule / SFTGroundingModule maths and bookkeeping, with a scripted policy in real Trainers."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import lightning.pytorch as pl
from medloc_lightning import ThresholdCurriculumCallback, distributed
from medloc_lightning.curriculum import FixedThreshold
from medloc_lightning.module import GRPOGroundingModule, SFTGroundingModule
from medloc_lightning.rewards import GroundingReward

from toy_modules import ScriptedPolicy, record_loader, square_records

# GT is [0, 0, 10, 10]: IoUs 1.0, 0.5, 0 (unparseable), 0 (empty)
ANSWERS = ['<answer>{"bbox_2d": [0, 0, 10, 10]}</answer>', "<answer>[0, 0, 5, 10]</answer>", "no box here", ""]


def fit(module, records, steps, callbacks=(), batch_size=2, **kw):
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, record_loader(records, batch_size))
    return trainer


def metrics(trainer):
    return {k: float(v) for k, v in trainer.logged_metrics.items()}


def test_rewards_advantages_and_logged_statistics_by_hand():
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4, iou_threshold=0.5, learning_rate=0.1)
    m = metrics(fit(module, square_records(2), 1))
    assert m["train/iou"] == pytest.approx((1.0 + 0.5) / 4)
    assert m["train/reward"] == pytest.approx(0.5)  # IoU >= 0.5 holds for the first two answers
    assert m["train/parse_rate"] == pytest.approx(0.5)
    assert m["train/frac_reward_zero_std"] == 0.0
    assert m["train/reward_std"] == pytest.approx(math.sqrt(4 * 0.25 / 3))  # Bessel over [1, 1, 0, 0]
    assert m["train/count_unparsed"] == 4 and m["train/count_empty"] == 2
    assert m["train/tau"] == pytest.approx(0.5)


def test_one_step_moves_probability_towards_rewarded_answers():
    policy = ScriptedPolicy(ANSWERS)
    fit(GRPOGroundingModule(policy, num_generations=4, learning_rate=0.1, max_grad_norm=None), square_records(2), 1)
    theta = policy.theta.detach()
    assert theta[0] > 0 and theta[1] > 0 and theta[2] < 0 and theta[3] < 0


def test_tau_is_read_from_the_module_attribute():
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4, iou_threshold=0.5)
    module.iou_threshold = 0.6  # what the curriculum callback does: [0, 0, 5, 10] now misses
    assert metrics(fit(module, square_records(2), 1))["train/reward"] == pytest.approx(0.25)


def test_all_equal_groups_give_zero_loss_and_no_update():
    policy = ScriptedPolicy(["no box", "still nothing"])
    trainer = fit(GRPOGroundingModule(policy, num_generations=2, learning_rate=0.1), square_records(2), 3)
    m = metrics(trainer)
    assert m["train/frac_reward_zero_std"] == 1.0 and m["train/count_zero_std_groups"] == 6
    assert m["train/count_all_fail_groups"] == 6  # nothing parsed, so no group earned any reward
    assert torch.count_nonzero(policy.theta) == 0 and all(math.isfinite(v) for v in m.values())


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_row_chunked_backward_equals_one_chunk(loss_type):
    grads = []
    for micro in (1, 3, 100):
        policy = ScriptedPolicy(ANSWERS)
        module = GRPOGroundingModule(policy, num_generations=4, micro_batch_size=micro, loss_type=loss_type,
                                     learning_rate=1e-3, max_grad_norm=None)
        seen = []
        policy.theta.register_hook(lambda g: seen.append(g.clone()))
        fit(module, square_records(2), 1)
        grads.append(torch.stack(seen).sum(0))
    torch.testing.assert_close(grads[0], grads[2])
    torch.testing.assert_close(grads[1], grads[2])


def test_num_iterations_reuses_the_rollout_with_cached_old_logprobs():
    policy = ScriptedPolicy(ANSWERS)
    module = GRPOGroundingModule(policy, num_generations=4, num_iterations=3, learning_rate=0.5, epsilon=0.05,
                                 max_grad_norm=None)
    trainer = fit(module, square_records(2), 3)  # 3 optimizer steps = one batch
    m = metrics(trainer)
    assert trainer.global_step == 3
    assert m["train/clip_ratio/region_mean"] > 0  # later iterations see ratios away from 1, so clipping engages


def test_kl_penalty_uses_the_reference_policy():
    policy = ScriptedPolicy(ANSWERS)
    module = GRPOGroundingModule(policy, num_generations=4, beta=0.5, learning_rate=0.5, num_iterations=2,
                                 max_grad_norm=None)
    m = metrics(fit(module, square_records(2), 2))
    assert policy.reference is not None and torch.count_nonzero(policy.reference) == 0
    assert m["train/kl"] > 0


def test_rejected_prompts_are_counted_and_the_rest_trains():
    policy = ScriptedPolicy(ANSWERS, reject=("r1",))
    module = GRPOGroundingModule(policy, num_generations=4)
    with pytest.warns(UserWarning) as caught:
        trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, record_loader(square_records(4), 2))
    said = " | ".join(str(w.message) for w in caught)
    assert "rejected" in said and "empty completion" in said and "without a parseable box" in said
    m = metrics(trainer)
    assert m["train/count_rejected"] == 1 and trainer.global_step == 2


def test_a_step_whose_prompts_are_all_rejected_is_skipped():
    policy = ScriptedPolicy(ANSWERS, reject=("r0", "r1"))
    trainer = fit(GRPOGroundingModule(policy, num_generations=4), square_records(4), 1, max_epochs=1)
    assert metrics(trainer)["train/count_skipped_steps"] == 1 and trainer.global_step == 1


def test_training_step_keeps_the_curriculum_contract():
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4, iou_threshold=0.9)
    cb = ThresholdCurriculumCallback(FixedThreshold(0.3, window=2))
    fit(module, square_records(4), 2, callbacks=[cb])
    assert module.iou_threshold == 0.3  # set by the callback
    assert cb.schedule.num_steps == 2 and cb.schedule.stats["mean_iou"] == pytest.approx(0.375)


def test_format_reward_weight():
    reward = GroundingReward(kind="iou", format_weight=0.5, require_think=False)
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4, reward=reward)
    m = metrics(fit(module, square_records(2), 1))
    # format holds for the two answers with a box inside <answer>; accuracy is the raw IoU
    assert m["train/format_reward"] == pytest.approx(0.5)
    assert m["train/reward"] == pytest.approx((1.0 + 0.5) / 4 + 0.5 * 0.5)


@pytest.mark.parametrize("kwargs,name", [({"num_generations": 1}, "num_generations"), ({"loss_type": "ppo"}, "loss_type"),
                                         ({"scale_rewards": "z"}, "scale_rewards"), ({"temperature": 0.0}, "temperature"),
                                         ({"beta": -1.0}, "beta"), ({"iou_threshold": 1.5}, "iou_threshold"),
                                         ({"lr_schedule": "step"}, "lr_schedule")])
def test_invalid_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GRPOGroundingModule(ScriptedPolicy(ANSWERS), **kwargs)


def test_validation_and_test_metrics():
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, record_loader(square_records(3), 2), verbose=False)
    m = metrics(trainer)
    assert m["test/acc@0.5"] == 1.0 and m["test/pseudo_map"] == 1.0 and m["test/parse_rate"] == 1.0


def test_sft_module_trains_its_loss():
    policy = ScriptedPolicy(ANSWERS)
    with torch.no_grad():
        policy.theta.fill_(1.0)
    fit(SFTGroundingModule(policy, learning_rate=0.1), square_records(4), 5)
    assert float((policy.theta.detach() ** 2).sum()) < 4.0


class NaNPolicy(ScriptedPolicy):
    """A scripted policy whose log-probs are NaN on the rollouts listed in ``nan_on`` (1-based)."""

    def __init__(self, nan_on: set[int]) -> None:
        super().__init__(ANSWERS)
        self.nan_on, self.rollouts = nan_on, 0

    def sample(self, batch, num_generations, temperature):
        self.rollouts += 1
        return super().sample(batch, num_generations, temperature)

    def logprobs(self, rollout, rows=None, *, reference=False):
        out = super().logprobs(rollout, rows, reference=reference)
        return out * float("nan") if self.rollouts in self.nan_on else out


def test_a_nan_step_is_skipped_counted_and_training_continues():
    policy = NaNPolicy(nan_on={3})
    module = GRPOGroundingModule(policy, num_generations=4, learning_rate=0.1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, record_loader(square_records(12), 2))
    assert trainer.global_step == 6 and policy.rollouts == 6
    assert torch.isfinite(policy.theta).all() and torch.count_nonzero(policy.theta) > 0
    assert metrics(trainer)["train/count_nonfinite_steps"] == 1
    assert any("step 2: non-finite loss (nan) or gradient: optimizer step skipped" in str(w.message) for w in caught)
    state = trainer.optimizers[0].state[policy.theta]
    assert int(state["step"]) == 5 and torch.isfinite(state["exp_avg"]).all()  # the NaN step left Adam alone


def test_too_many_nan_steps_in_a_row_stop_training_naming_the_step():
    module = GRPOGroundingModule(NaNPolicy(nan_on={2, 3, 4, 5}), num_generations=4, max_nonfinite_steps=3)
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match=r"step 3: 3 optimizer steps in a row had a non-finite loss.*log-probs"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, record_loader(square_records(12), 2))


class GradNormProbe(GRPOGroundingModule):
    """Records the gradient norm each optimizer step applies (after the module's own checks and clip)."""

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.norms.append(float(distributed.gradient_norm(self)))


def test_clipping_sees_unscaled_gradients_under_a_gradient_scaler():
    from lightning.pytorch.plugins.precision import MixedPrecision

    norms = {}
    for name in ("fp32", "scaled"):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=scaler)] if name == "scaled" else []
        module = GradNormProbe(ScriptedPolicy(ANSWERS), num_generations=4, max_grad_norm=1e-3, learning_rate=0.1)
        module.norms = []
        fit(module, square_records(8), 3, plugins=plugins)
        norms[name] = module.norms
    assert len(norms["fp32"]) == 3 and max(norms["fp32"]) == pytest.approx(1e-3, rel=1e-4)  # clipping was active
    assert norms["scaled"] == pytest.approx(norms["fp32"], rel=1e-3)  # not the scaled norm / 65536


def test_the_nonfinite_streak_is_checkpointed():
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4)
    module._nonfinite_streak = 2
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    resumed = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed._nonfinite_streak == 2


def test_resuming_without_the_curriculum_that_saved_tau_warns(tmp_path):
    """Lightning's own warning names the missing callback; τ stays the module's own."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(steps, callbacks, ckpt_path=None):
        module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4, iou_threshold=0.5)
        trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
        trainer.fit(module, record_loader(square_records(8), 2), ckpt_path=ckpt_path, weights_only=True)
        return module

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=2, save_top_k=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(2, [ThresholdCurriculumCallback(FixedThreshold(0.3, window=2)), saver])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = run(4, [], ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")  # e.g. `--curriculum null`
    assert module.iou_threshold == 0.5
    assert any("callbacks used to create the checkpoint need to be provided" in str(w.message)
               and "ThresholdCurriculumCallback" in str(w.message) for w in caught)


# --- learning-rate schedules over every optimizer step ---------------------------------------------------------

class LearningRates(pl.Callback):
    """The learning rate each optimizer step uses, and τ at the start of each batch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.taus: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.taus.append(float(getattr(pl_module, "iou_threshold", math.nan)))


@pytest.mark.parametrize("schedule,expected", [
    # transformers' schedules with warm-up 2 over 10 steps, written out: warm-up k / 2, then the decay
    ("constant", [0.0, 0.5] + [1.0] * 8),
    ("linear", [0.0, 0.5] + [(10 - k) / 8 for k in range(2, 10)]),
    ("cosine", [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * (k - 2) / 8)) for k in range(2, 10)]),
])
def test_learning_rate_schedules_take_their_values_step_by_step(schedule, expected):
    lrs = LearningRates()
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4, learning_rate=0.1, warmup_steps=2,
                                 lr_schedule=schedule)
    fit(module, square_records(2), 10, callbacks=[lrs])
    assert lrs.lrs == pytest.approx([0.1 * f for f in expected])


def test_sft_learning_rate_schedule_spans_the_run():
    lrs = LearningRates()
    fit(SFTGroundingModule(ScriptedPolicy(ANSWERS), learning_rate=0.1, lr_schedule="linear"), square_records(8), 4,
        callbacks=[lrs])
    assert lrs.lrs == pytest.approx([0.1, 0.075, 0.05, 0.025])


def test_with_several_optimizer_steps_per_batch_the_schedules_span_every_step():
    # mu = 2 and one epoch of 4 batches: 8 optimizer steps. Counted as 4 batches, the linear learning rate would
    # reach 0 halfway and a progress-driven tau its last stage early.
    from medloc_lightning.curriculum import ProgressSchedule

    lrs = LearningRates()
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4, num_iterations=2, learning_rate=0.1,
                                 lr_schedule="linear", max_grad_norm=None)
    curriculum = ThresholdCurriculumCallback(ProgressSchedule([(0.5, 0.2), (1.0, 0.7)]))
    trainer = fit(module, square_records(8), -1, callbacks=[lrs, curriculum], max_epochs=1)
    assert trainer.global_step == 8
    assert lrs.lrs == pytest.approx([0.1 * (8 - k) / 8 for k in range(8)])
    assert lrs.taus == [0.2, 0.2, 0.2, 0.7]  # observed after 2, 4, 6 of 8 steps: progress 0.25, 0.5, 0.75


def test_a_decaying_schedule_needs_a_run_with_an_end():
    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4, lr_schedule="cosine")
    with pytest.raises(ValueError, match="max_steps or trainer.max_epochs"):
        fit(module, square_records(2), -1, max_epochs=-1)


def test_a_rank_without_rows_still_gets_its_empty_old_and_reference_logprobs():
    """Under DDP a rank whose prompts were all rejected runs only padding passes ([None, None]: another rank has two
    chunks); its no-grad log-probs are then an empty [0, T] tensor, not an error."""
    from medloc_lightning.policies.base import Rollout

    module = GRPOGroundingModule(ScriptedPolicy(ANSWERS), num_generations=4)
    empty = Rollout(num_generations=4, texts=[], boxes=torch.zeros(0, 4), mask=torch.zeros(0, 3))
    assert module._logprobs_no_grad(empty, [None, None], reference=False).shape == (0, 3)
