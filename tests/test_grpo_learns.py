"""The main path learns: GRPO on the shipped Qwen2.5-VL grounding prior raises the reward it is given, and
the same run with the reward's sign flipped (so every advantage flips) lowers it.

A sign error in the advantages or the loss, or log-probs scored against the wrong tokens, breaks one of
the two directions.
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
from medloc_lightning.policies.base import gt_boxes
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
