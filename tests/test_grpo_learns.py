"""The main path learns: GRPO on the shipped Qwen2.5-VL grounding prior raises the reward it is given, and
the same run with the reward's sign flipped (so every advantage flips) lowers it.

A sign error in the advantages or the loss, or log-probs scored against the wrong tokens, breaks one of
the two directions. What those two cannot see has a test each below: the KL term (β > 0), the clipped ratio
over μ > 1 optimizer steps on one rollout, boxes on images at another size than the model's, and advantages
normalised per group rather than over the batch.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

import lightning.pytorch as pl
from medloc_lightning.boxes import box_iou
from medloc_lightning.data.synth import PRESETS, make_record
from medloc_lightning.module import GRPOGroundingModule
from medloc_lightning.data.records import gt_boxes
from medloc_lightning.policies.qwen import QwenVLPolicy
from medloc_lightning.prior import PRIOR_PROMPT_TEMPLATE
from medloc_lightning.rewards import GroundingReward

from toy_modules import record_loader

SIZE = 84
TAU = 0.5  # the prior hits about 60% of its samples here: room to move both ways
PRIOR = "medloc:tiny-qwen2.5-vl-grounding"


class NegatedReward(GroundingReward):
    """The reward times -1: group-normalised advantages flip sign exactly."""

    def __call__(self, ious, tau, texts=None):
        total, parts = super().__call__(ious, tau, texts)
        return -total, parts


def records(n: int, seed: int) -> list[dict]:
    out = []
    for i in range(n):
        record, pixels = make_record(i, seed, "mixed", SIZE, PRESETS["single"])
        out.append({**record, "image": Image.fromarray(pixels).convert("RGB")})
    return out


def policy() -> QwenVLPolicy:
    return QwenVLPolicy(PRIOR, min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE, prompt_template=PRIOR_PROMPT_TEMPLATE,
                        max_new_tokens=40, freeze_vision=False)


def sampled(policy: QwenVLPolicy, batch: list[dict], samples: int = 16) -> tuple[float, float]:
    """Mean reward 1[IoU >= TAU] and mean IoU of ``samples`` completions per record at temperature 1, with a
    fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        rollout = policy.sample(batch, samples, 1.0)
    ious = box_iou(rollout.boxes.float(), gt_boxes(batch).repeat_interleave(samples, 0))
    return float((ious >= TAU).float().mean()), float(ious.mean())


def train(reward: GroundingReward, batch: list[dict], steps: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(reward, IoU) sampled before and after ``steps`` GRPO steps from the prior."""
    pl.seed_everything(0, verbose=False)
    pol = policy()
    pol.configure()
    before = sampled(pol, batch)
    module = GRPOGroundingModule(pol, num_generations=8, temperature=1.0, reward=reward, iou_threshold=TAU,
                                 learning_rate=2e-4, micro_batch_size=16, seed=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, record_loader(batch, 2))
    return before, sampled(pol, batch)


@pytest.fixture(scope="module")
def batch() -> list[dict]:
    return records(8, seed=7)


def test_grpo_raises_the_reward_of_the_grounding_prior(batch: list[dict]) -> None:
    (reward0, iou0), (reward1, iou1) = train(GroundingReward(kind="threshold"), batch, steps=32)
    assert reward1 > reward0 + 0.10 and iou1 > iou0 + 0.03, (reward0, reward1, iou0, iou1)


def test_grpo_with_the_reward_negated_lowers_it(batch: list[dict]) -> None:
    (reward0, iou0), (reward1, iou1) = train(NegatedReward(kind="threshold"), batch, steps=32)
    assert reward1 < reward0 - 0.10 and iou1 < iou0 - 0.03, (reward0, reward1, iou0, iou1)


# --- what the two direction tests cannot see -------------------------------------------------------------------

def _trainer(steps: int, callbacks: list | None = None) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=callbacks or [])


def _fit(module: GRPOGroundingModule, batch: list[dict], steps: int, batch_size: int = 2,
         callbacks: list | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(steps, callbacks).fit(module, record_loader(batch, batch_size))


def _probe(pol: QwenVLPolicy, batch: list[dict], samples: int = 8):
    """Completions sampled once with a fixed seed: the same tokens are scored before and after training."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        return pol.sample(batch, samples, 1.0)


def _token_mean(values: torch.Tensor, rollout) -> float:
    mask = rollout.mask.float()
    return float((values * mask).sum() / mask.sum())


class ConstantReward(GroundingReward):
    """Every completion gets the same reward: every advantage is 0, so only the KL term can move the policy."""

    def __call__(self, ious, tau, texts=None):
        total, parts = super().__call__(ious, tau, texts)
        return torch.ones_like(total), parts


def test_the_kl_term_pulls_a_drifted_policy_back_to_its_reference(batch: list[dict]) -> None:
    """β > 0 with zero advantages: the loss is β·KL(π ‖ π_ref) alone, so a policy moved away from the prior
    (its reference) must come back. A KL term with the wrong sign pushes it further away; a reference that is
    the policy itself (or missing) leaves it where it is. KL is estimated on fresh samples of the current
    policy (k3 is only an estimate of KL under the policy's own samples)."""
    pl.seed_everything(0, verbose=False)
    pol = policy()
    pol.configure()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in pol.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2 * (p.std() if p.numel() > 1 else 1.0))
    pol.enable_reference()  # the prior, loaded afresh: the drifted weights are not its copy
    module = GRPOGroundingModule(pol, num_generations=8, temperature=1.0, reward=ConstantReward(kind="threshold"),
                                 iou_threshold=TAU, beta=0.4, learning_rate=2e-4, micro_batch_size=64, seed=0)

    def kl() -> float:
        probe = _probe(pol, batch)
        with torch.no_grad():
            delta = pol.logprobs(probe, reference=True) - pol.logprobs(probe)
        return _token_mean(torch.exp(delta) - delta - 1, probe)

    before = kl()
    _fit(module, batch, steps=12, batch_size=8)  # 64 completions a step: Adam follows the KL, not the noise
    after = kl()
    assert before > 0.005 and after < 0.6 * before, (before, after)


def test_clipping_bounds_how_far_mu_steps_on_one_rollout_move_the_policy(batch: list[dict]) -> None:
    """μ = 8 optimizer steps on one rollout: the clipped ratio stops the push on tokens already moved by more
    than ε, so the policy ends much closer to the one that sampled than with the clip removed. A ratio taken
    against the current policy instead of the sampling one, or a clip that never engages, moves it as far as
    no clip at all."""

    def drift(epsilon: float) -> float:
        pl.seed_everything(0, verbose=False)
        pol = policy()
        pol.configure()
        probe = _probe(pol, batch[:4])
        with torch.no_grad():
            old = pol.logprobs(probe)
        module = GRPOGroundingModule(pol, num_generations=8, temperature=1.0, reward=GroundingReward(kind="threshold"),
                                     iou_threshold=TAU, learning_rate=1e-3, num_iterations=8, epsilon=epsilon,
                                     micro_batch_size=16, seed=0)
        _fit(module, batch[:4], steps=8, batch_size=4)  # one batch of 4 prompts: one rollout, 8 optimizer steps
        with torch.no_grad():
            return _token_mean((pol.logprobs(probe) - old).abs(), probe)

    clipped, unclipped = drift(0.05), drift(1e6)
    assert clipped < 0.6 * unclipped, (clipped, unclipped)


def _at_twice_the_size(records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        w, h = r["image"].size
        out.append({**r, "image": r["image"].resize((2 * w, 2 * h), Image.NEAREST), "width": 2 * w, "height": 2 * h,
                    "bbox": [2 * v for v in r["bbox"]]})
    return out


def test_grpo_learns_on_images_at_twice_the_native_size(batch: list[dict]) -> None:
    """The model sees every image at its 84 px; answers are mapped back to the original pixels. At 168 px the
    prior must score as it does natively, and GRPO must still raise the reward. A mapping off by the resize
    factor puts every box in the wrong place: the reward starts near 0 and has nothing to learn from."""
    big = _at_twice_the_size(batch)
    pl.seed_everything(0, verbose=False)
    native, _ = sampled(policy(), batch)
    (reward0, iou0), (reward1, iou1) = train(GroundingReward(kind="threshold"), big, steps=24)
    assert abs(reward0 - native) < 0.1, (reward0, native)
    assert reward1 > reward0 + 0.10 and iou1 > iou0 + 0.03, (reward0, reward1, iou0, iou1)


class OffsetReward(GroundingReward):
    """The threshold reward plus a constant per prompt group (its position in the batch times ``offset``)."""

    def __init__(self, offset: float, group: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.offset, self.group = offset, group

    def __call__(self, ious, tau, texts=None):
        total, parts = super().__call__(ious, tau, texts)
        shift = torch.arange(total.numel(), device=total.device) // self.group * self.offset
        return total + shift.to(total.dtype), parts


class Gradients(pl.Callback):
    """The gradient of every trainable parameter at the first optimizer step."""

    def __init__(self) -> None:
        self.grads: list[torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.grads is None:
            self.grads = [p.grad.detach().clone() for p in pl_module.policy.trainable_parameters() if p.grad is not None]


def test_advantages_are_relative_to_each_group_alone(batch: list[dict]) -> None:
    """GRPO's advantage of a completion depends only on the rewards of its own group (its prompt's G
    completions), so adding a constant to one group's rewards changes no gradient. Centred on the batch mean
    instead, the offset leaks into every group's advantages and the gradient moves with it."""

    def gradient(offset: float, scale: str) -> list[torch.Tensor]:
        pl.seed_everything(0, verbose=False)
        pol = policy()
        pol.configure()
        spy = Gradients()
        module = GRPOGroundingModule(pol, num_generations=8, temperature=1.0,
                                     reward=OffsetReward(offset, 8, kind="threshold"), iou_threshold=TAU,
                                     learning_rate=2e-4, micro_batch_size=16, seed=0, scale_rewards=scale)
        _fit(module, batch[:4], steps=1, batch_size=4, callbacks=[spy])
        return spy.grads

    def relative_change(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return float(sum((x - y).norm() ** 2 for x, y in zip(a, b)).sqrt() / sum(x.norm() ** 2 for x in a).sqrt())

    for scale in ("group", "none"):
        base, shifted = gradient(0.0, scale), gradient(0.5, scale)
        assert sum(float(g.norm()) for g in base) > 0  # the batch carries a learning signal
        assert relative_change(base, shifted) < 1e-4, scale
