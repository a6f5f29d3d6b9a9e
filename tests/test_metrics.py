"""GroundingMetrics against an exact (rational) reference, >= at exact thresholds, NaN rows, merging, reset."""
from __future__ import annotations

import math
import warnings
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.metrics import PSEUDO_MAP_THRESHOLDS, GroundingMetrics

KEYS = {"acc@0.5", "acc@0.75", "pseudo_map", "miou", "parse_rate"}
DECIMAL_THRESHOLDS = [Fraction(50 + 5 * k, 100) for k in range(10)]


def exact_iou(a: list[int], b: list[int] | None) -> Fraction:
    """IoU of integer boxes as an exact fraction (0 for a missing prediction)."""
    if b is None:
        return Fraction(0)
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return Fraction(inter, (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference(targets: list[list[int]], preds: list[list[int] | None], extra: tuple[str, ...] = ()) -> dict:
    """The metrics by plain loops over exact IoUs and exact decimal thresholds."""
    n = len(targets)
    ious = [exact_iou(t, p) for t, p in zip(targets, preds)]

    def acc(t: Fraction) -> float:
        return sum(1 for v in ious if v >= t) / n

    out = {
        "acc@0.5": acc(Fraction(1, 2)),
        "acc@0.75": acc(Fraction(3, 4)),
        "pseudo_map": sum(acc(t) for t in DECIMAL_THRESHOLDS) / 10,
        "miou": float(sum(ious) / n),
        "parse_rate": sum(p is not None for p in preds) / n,
    }
    for t in extra:
        out[f"acc@{t}"] = acc(Fraction(t))
    return out


@st.composite
def int_box(draw: st.DrawFn) -> list[int]:
    x1, y1 = draw(st.integers(0, 150)), draw(st.integers(0, 150))
    return [x1, y1, x1 + draw(st.integers(1, 50)), y1 + draw(st.integers(1, 50))]


def as_tensor(boxes: list[list[int] | None], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([b if b is not None else [math.nan] * 4 for b in boxes], dtype=dtype).reshape(-1, 4)


def test_pseudo_map_thresholds_are_exact_decimals() -> None:
    assert PSEUDO_MAP_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@settings(deadline=None, max_examples=60)
@given(
    st.lists(st.tuples(int_box(), st.one_of(st.none(), int_box())), min_size=1, max_size=40),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(1, 3),
)
def test_matches_exact_reference(pairs: list, dtype: torch.dtype, chunks: int) -> None:
    targets, preds = [t for t, _ in pairs], [p for _, p in pairs]
    metric = GroundingMetrics(thresholds=(0.3,))
    step = math.ceil(len(pairs) / chunks)
    for i in range(0, len(pairs), step):
        metric.update(as_tensor(preds[i:i + step], dtype), as_tensor(targets[i:i + step], dtype))
    got = {k: v.item() for k, v in metric.compute().items()}
    expected = reference(targets, preds, extra=("0.3",))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6 if key == "miou" else 1e-12), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accuracy_counts_ious_exactly_at_thresholds(dtype: torch.dtype) -> None:
    target = [[0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 20, 1], [0, 0, 10, 1]]
    # IoUs: exactly 0.5, 0.75, 0.55, 0.7 (0.55 and 0.7 are not binary fractions; >= must still hold)
    preds = [[0, 0, 2, 4], [0, 0, 3, 4], [0, 0, 11, 1], [0, 0, 7, 1]]
    metric = GroundingMetrics()
    metric.update(as_tensor(preds, dtype), as_tensor(target, dtype))
    out = metric.compute()
    assert out["acc@0.5"].item() == 1.0
    assert out["acc@0.75"].item() == 0.25
    # hits per IoU over 0.50:0.05:0.95 -> 0.5: 1, 0.75: 6, 0.55: 2, 0.7: 5
    assert out["pseudo_map"].item() == pytest.approx((1 + 6 + 2 + 5) / 40)
    assert out["miou"].item() == pytest.approx((0.5 + 0.75 + 0.55 + 0.7) / 4)


def test_nan_rows_count_as_unparsed_iou_zero() -> None:
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    preds = target.clone()
    preds[1] = math.nan
    preds[3, 2] = math.nan  # a partly-NaN row is no box either
    metric = GroundingMetrics()
    metric.update(preds, target)
    out = metric.compute()
    assert out["parse_rate"].item() == 0.5
    assert out["acc@0.5"].item() == 0.5
    assert out["miou"].item() == 0.5
    assert out["pseudo_map"].item() == 0.5
    assert set(out) == KEYS


def test_merged_states_equal_one_metric_on_all_data() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(50, 2, generator=g) * 100
    target = torch.cat([target, target + 5 + torch.rand(50, 2, generator=g) * 50], 1)
    preds = target + torch.randn(50, 4, generator=g) * 8
    preds[::6] = math.nan
    whole = GroundingMetrics(thresholds=(0.1, 0.9))
    whole.update(preds, target)
    a, b = GroundingMetrics(thresholds=(0.1, 0.9)), GroundingMetrics(thresholds=(0.1, 0.9))
    a.update(preds[:17], target[:17])
    b.update(preds[17:], target[17:])
    summed = GroundingMetrics(thresholds=(0.1, 0.9))  # what a "sum" all-reduce of the states does
    summed.update(torch.zeros(0, 4), torch.zeros(0, 4))
    summed.sums = a.sums + b.sums
    a.merge_state(b)
    expected = whole.compute()
    for merged in (a, summed):
        got = merged.compute()
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key])


def test_forward_returns_batch_values_and_accumulates() -> None:
    target = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2)
    metric = GroundingMetrics()
    first = metric(torch.tensor([[0.0, 0.0, 2.0, 4.0], [0.0, 0.0, 4.0, 4.0]]), target)
    second = metric(torch.full((2, 4), math.nan), target)
    assert first["acc@0.75"].item() == 0.5 and second["parse_rate"].item() == 0.0
    assert metric.compute()["acc@0.75"].item() == 0.25
    assert metric.compute()["parse_rate"].item() == 0.5


def test_reset_and_empty_compute_give_zeros_with_a_warning() -> None:
    metric = GroundingMetrics()
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = metric.compute()
    assert set(empty) == KEYS and all(v.item() == 0.0 for v in empty.values())
    metric.update(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert metric.compute()["acc@0.5"].item() == 1.0
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert all(v.item() == 0.0 for v in metric.compute().values())
    metric.update(torch.zeros(0, 4), torch.zeros(0, 4))  # an empty batch is allowed and changes nothing
    assert all(v.item() == 0.0 for v in metric.compute().values())


@pytest.mark.parametrize(
    ("preds", "target", "match"),
    [
        (torch.zeros(3, 3), torch.zeros(3, 3), r"\[N, 4\]"),
        (torch.zeros(3, 4), torch.zeros(2, 4), r"\[N, 4\]"),
        (torch.zeros(4), torch.zeros(4), r"\[N, 4\]"),
        (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), r"\[N, 4\]"),
        ([[0, 0, 1, 1]], torch.zeros(1, 4), "tensors"),
        (torch.zeros(1, 4), torch.tensor([[0.0, 0.0, math.nan, 1.0]]), "finite"),
    ],
)
def test_update_validates_inputs(preds: object, target: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GroundingMetrics().update(preds, target)  # type: ignore[arg-type]


def test_extra_thresholds() -> None:
    metric = GroundingMetrics(thresholds=(0.3, 0.5, 0.95))
    metric.update(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[0.0, 0.0, 10.0, 4.0]]))  # IoU 0.4
    out = metric.compute()
    assert set(out) == KEYS | {"acc@0.3", "acc@0.95"}
    assert out["acc@0.3"].item() == 1.0 and out["acc@0.5"].item() == 0.0
    for bad in (1.5, -0.1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="thresholds"):
            GroundingMetrics(thresholds=(bad,))  # type: ignore[arg-type]
