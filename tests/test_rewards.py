"""Rewards: each kind at and around tau, weights and validation, and one hit rule shared with the curriculum."""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.boxes import box_iou
from medloc_lightning.parsing import format_answer
from medloc_lightning.rewards import (
    GroundingReward,
    blended_reward,
    format_reward,
    gated_iou_reward,
    iou_reward,
    threshold_reward,
)

IOUS = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])


def test_threshold_reward_uses_greater_or_equal() -> None:
    assert threshold_reward(IOUS, 0.5).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert threshold_reward([0.4999], 0.5).tolist() == [0.0]
    assert threshold_reward(IOUS, 0.0).tolist() == [1.0] * 5  # an unparsed answer (IoU 0) hits tau = 0
    assert threshold_reward(IOUS, 1.0).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert threshold_reward(IOUS.double(), 0.5).dtype == torch.float64


def test_iou_gated_and_blended_rewards() -> None:
    assert iou_reward(IOUS).tolist() == IOUS.tolist()
    assert gated_iou_reward(IOUS, 0.5).tolist() == [0.0, 0.0, 0.5, pytest.approx(0.7), 1.0]
    blend = blended_reward(torch.tensor([0.2, 0.6]), 0.5, alpha=0.25)
    torch.testing.assert_close(blend, torch.tensor([0.25 * 0.2, 0.75 + 0.25 * 0.6]))
    assert blended_reward(IOUS, 0.5, alpha=0.0).tolist() == threshold_reward(IOUS, 0.5).tolist()
    torch.testing.assert_close(blended_reward(IOUS, 0.5, alpha=1.0), IOUS)


@pytest.mark.parametrize(
    "call",
    [
        lambda: threshold_reward([float("nan")], 0.5),
        lambda: iou_reward([1.5]),
        lambda: gated_iou_reward([-0.1], 0.5),
        lambda: threshold_reward([0.5], 1.5),
        lambda: threshold_reward([0.5], float("nan")),
        lambda: blended_reward([0.5], 0.5, alpha=2.0),
    ],
)
def test_reward_functions_reject_bad_values(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


def test_format_reward() -> None:
    ok = format_answer((1, 2, 3, 4), think="t")
    texts = [ok, format_answer((1, 2, 3, 4)), "garbage"]
    assert format_reward(texts).tolist() == [1.0, 0.0, 0.0]
    assert format_reward(texts, require_think=False).tolist() == [1.0, 1.0, 0.0]


def test_grounding_reward_kinds_and_weights() -> None:
    texts = [format_answer((1, 2, 3, 4), think="t"), "junk", "junk", "junk", "junk"]
    for kind, expected in [
        ("threshold", threshold_reward(IOUS, 0.5)),
        ("iou", IOUS),
        ("gated_iou", gated_iou_reward(IOUS, 0.5)),
        ("blend", blended_reward(IOUS, 0.5, 0.3)),
    ]:
        reward = GroundingReward(kind=kind, accuracy_weight=2.0, format_weight=0.5, blend_alpha=0.3)
        total, parts = reward(IOUS, 0.5, texts)
        torch.testing.assert_close(parts["accuracy"], expected)
        assert parts["format"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
        torch.testing.assert_close(total, 2.0 * expected + 0.5 * parts["format"])
    total, parts = GroundingReward()(IOUS, 0.5)  # defaults: threshold, no format term, texts optional
    assert total.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert parts["format"].tolist() == [0.0] * 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(kind="soft"), "kind"),
        (dict(accuracy_weight=-1.0), "accuracy_weight"),
        (dict(format_weight=float("inf")), "format_weight"),
        (dict(format_weight="1"), "format_weight"),
        (dict(blend_alpha=1.5), "blend_alpha"),
        (dict(require_think="yes"), "require_think"),
    ],
)
def test_grounding_reward_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GroundingReward(**kwargs)


def test_grounding_reward_needs_texts_for_format_weight() -> None:
    with pytest.raises(ValueError, match="texts"):
        GroundingReward(format_weight=0.1)(IOUS, 0.5)
    with pytest.raises(ValueError, match="texts"):
        GroundingReward()(IOUS, 0.5, ["one text"])


# --- one precision for a hit: the reward and the curriculum agree, ties included ---------------------------------

@pytest.mark.parametrize("tau", [0.45, 0.65, 0.70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_iou_exactly_at_tau_is_a_hit_for_the_reward_and_the_curriculum(tau: float, dtype: torch.dtype) -> None:
    from medloc_lightning.curriculum import FixedThreshold

    # a box covering tau * 20 of a 20-pixel-wide target: IoU is tau, as box_iou computes it in this dtype
    pred = torch.tensor([[0.0, 0.0, round(tau * 20), 10.0]], dtype=dtype)
    iou = box_iou(pred, torch.tensor([[0.0, 0.0, 20.0, 10.0]], dtype=dtype))
    assert threshold_reward(iou, tau).item() == 1.0
    schedule = FixedThreshold(tau)
    schedule.observe(iou)
    assert schedule.stats["hit_rate"] == 1.0


@given(iou=st.floats(0.0, 1.0), tau=st.floats(0.0, 1.0), wide=st.booleans())
@settings(max_examples=300, deadline=None)
def test_reward_and_curriculum_hits_agree_everywhere(iou: float, tau: float, wide: bool) -> None:
    from medloc_lightning.curriculum import FixedThreshold

    ious = torch.tensor([iou], dtype=torch.float64 if wide else torch.float32)
    for near in (iou, float(torch.tensor(tau, dtype=torch.float32))):  # and an IoU sitting on tau in float32
        ious = torch.tensor([near], dtype=ious.dtype)
        schedule = FixedThreshold(tau)
        schedule.observe(ious)
        assert threshold_reward(ious, tau).item() == schedule.stats["hit_rate"], (near, tau, ious.dtype)


TIES = (0.3, 0.45, 0.55, 0.65, 0.70, 0.75, 0.8)  # the curricula's thresholds, written as float64
_near_ties = st.sampled_from(TIES).flatmap(lambda t: st.sampled_from(
    [t, math.nextafter(t, 0.0), math.nextafter(t, 1.0), float(torch.tensor(t, dtype=torch.float32))]))


@given(ious=st.lists(st.one_of(st.floats(0.0, 1.0), _near_ties), min_size=1, max_size=16),
       tau=st.one_of(st.floats(0.0, 1.0), st.sampled_from(TIES)), wide=st.booleans())
@settings(max_examples=400, deadline=None)
def test_the_reward_and_the_curriculum_share_one_hit_rule(ious: list[float], tau: float, wide: bool) -> None:
    # the two implementations of IoU >= tau in float32: rewards.hits (torch) and schedules.hit_fraction (numpy)
    from medloc_lightning.curriculum.schedules import as_iou_array, hit_fraction
    from medloc_lightning.rewards import hits

    tensor = torch.tensor(ious, dtype=torch.float64 if wide else torch.float32)
    rewarded = hits(tensor, tau).tolist()
    arr = as_iou_array(tensor)  # what the curriculum keeps of them
    assert [hit_fraction(arr[i: i + 1], tau) == 1.0 for i in range(len(ious))] == rewarded, (ious, tau)
