"""Box maths: IoU against a plain-python reference, smart_resize against transformers, geometry round trips."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.boxes import (
    ImageGeometry,
    box_area,
    box_iou,
    box_is_valid,
    clip_box,
    smart_resize,
)

NAN, INF = math.nan, math.inf


def reference_iou(a: list[float], b: list[float]) -> float:
    """Textbook IoU, written independently: 0 for any non-finite or empty box."""
    if not all(math.isfinite(v) for v in (*a, *b)):
        return 0.0
    if a[2] <= a[0] or a[3] <= a[1] or b[2] <= b[0] or b[3] <= b[1]:
        return 0.0
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


coord = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
side = st.floats(1e-3, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def valid_boxes(draw: st.DrawFn) -> list[float]:
    x1, y1 = draw(coord), draw(coord)
    return [x1, y1, x1 + draw(side), y1 + draw(side)]


any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
any_boxes = st.lists(any_float, min_size=4, max_size=4)


# --- box_iou ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),
        ([0, 0, 4, 4], [0, 0, 2, 4], 0.5),
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),  # touching edges: continuous coordinates, no +1
        ([0, 0, 1, 1], [5, 5, 6, 6], 0.0),
        ([10.5, 0, 20.5, 10], [15.5, 0, 25.5, 10], 1 / 3),
    ],
)
def test_iou_known_values(a: list[float], b: list[float], expected: float) -> None:
    got = box_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "pred",
    [
        [NAN, 0, 1, 1], [0, 0, INF, 1], [-INF, -INF, INF, INF], [0, 0, 1, NAN],
        [2, 0, 1, 1], [0, 2, 1, 1], [2, 2, 0, 0],  # inverted
        [0, 0, 0, 1], [0, 0, 1, 0], [0.5, 0.5, 0.5, 0.5],  # zero area
    ],
)
def test_invalid_prediction_scores_zero(pred: list[float]) -> None:
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0], [-10.0, -10.0, 10.0, 10.0]])
    got = box_iou(torch.tensor(pred).expand(2, 4), target)
    assert torch.equal(got, torch.zeros(2))


@pytest.mark.parametrize("target", [[0, 0, 0, 0], [1, 1, 0, 0], [NAN, 0, 1, 1], [0, 0, INF, 1]])
def test_degenerate_target_scores_zero_not_nan(target: list[float]) -> None:
    got = box_iou(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]), torch.tensor(target).expand(2, 4))
    assert torch.equal(got, torch.zeros(2))


@settings(deadline=None)
@given(valid_boxes(), valid_boxes())
def test_iou_matches_reference_is_symmetric_and_bounded(a: list[float], b: list[float]) -> None:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ab, ba = box_iou(ta, tb).item(), box_iou(tb, ta).item()
    assert ab == ba
    assert 0.0 <= ab <= 1.0
    assert ab == pytest.approx(reference_iou(a, b), rel=1e-9, abs=1e-12)


@settings(deadline=None)
@given(any_boxes, any_boxes)
def test_iou_never_nan_on_any_input(a: list[float], b: list[float]) -> None:
    for dtype in (torch.float32, torch.float64):
        got = box_iou(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype))
        assert not torch.isnan(got)
        assert 0.0 <= got.item() <= 1.0
        if not all(math.isfinite(v) for v in a) or a[2] <= a[0] or a[3] <= a[1]:
            assert got.item() == 0.0


@settings(deadline=None, max_examples=30)
@given(st.lists(st.tuples(valid_boxes(), valid_boxes()), min_size=1, max_size=20))
def test_iou_is_elementwise_over_batches(pairs: list[tuple[list[float], list[float]]]) -> None:
    preds = torch.tensor([p for p, _ in pairs], dtype=torch.float64)
    targets = torch.tensor([t for _, t in pairs], dtype=torch.float64)
    got = box_iou(preds, targets)
    assert got.shape == (len(pairs),)
    expected = torch.tensor([reference_iou(p, t) for p, t in pairs], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # broadcasting: every prediction against one target, and a [P, 1, 4] x [1, T, 4] table
    torch.testing.assert_close(
        box_iou(preds, targets[0]), torch.tensor([reference_iou(p, pairs[0][1]) for p, _ in pairs],
                                                 dtype=torch.float64), rtol=1e-9, atol=1e-12)
    table = box_iou(preds[:, None], targets[None])
    assert table.shape == (len(pairs), len(pairs))
    torch.testing.assert_close(table.diagonal(), expected, rtol=1e-9, atol=1e-12)


def test_iou_dtypes_and_shape_errors() -> None:
    a = [[0, 0, 2, 2]]
    assert box_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(a, dtype=torch.float32)).dtype == torch.float32
    assert box_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(a, dtype=torch.float64)).dtype == torch.float64
    ints = box_iou(torch.tensor(a), torch.tensor([[1, 1, 3, 3]]))
    assert ints.dtype == torch.get_default_dtype() and ints.item() == pytest.approx(1 / 7)
    with pytest.raises(ValueError, match="pred"):
        box_iou(torch.zeros(3, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="target"):
        box_iou(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="broadcast"):
        box_iou(torch.zeros(3, 4), torch.zeros(2, 4))


def test_iou_of_empty_batch() -> None:
    assert box_iou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


def test_box_area_and_validity() -> None:
    boxes = torch.tensor([[0, 0, 2, 3], [2, 0, 1, 1], [0, 0, 0, 5], [NAN, 0, 1, 1], [0, 0, INF, 1]])
    assert box_area(boxes)[:3].tolist() == [6.0, 0.0, 0.0]
    assert box_is_valid(boxes).tolist() == [True, False, False, False, False]


# --- smart_resize ----------------------------------------------------------------------------------------

def test_smart_resize_hand_computed() -> None:
    # 450/28 = 16.07 -> 448; 600/28 = 21.4 -> 588; 448 * 588 lies within the default bounds.
    assert smart_resize(450, 600) == (448, 588)
    # 20x30 rounds to 28x28 = 784 < 3136: scale by sqrt(3136/600) = 2.286 and ceil: 45.7 -> 56, 68.6 -> 84.
    assert smart_resize(20, 30) == (56, 84)


def test_smart_resize_rejects_extreme_aspect_and_bad_sizes() -> None:
    smart_resize(1, 200)
    with pytest.raises(ValueError, match="height=1, width=201"):
        smart_resize(1, 201)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError):
            smart_resize(bad, 100)  # type: ignore[arg-type]


@settings(deadline=None, max_examples=300)
@given(
    st.integers(1, 6000),
    st.integers(1, 6000),
    st.sampled_from([(3136, 12845056), (3136, 1003520), (256 * 28 * 28, 1280 * 28 * 28), (3136, 200704), (100, 5000)]),
    st.sampled_from([28, 14, 32]),
)
def test_smart_resize_matches_transformers(height: int, width: int, bounds: tuple[int, int], factor: int) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    min_pixels, max_pixels = bounds
    try:
        expected = reference(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError:
        with pytest.raises(ValueError):
            smart_resize(height, width, factor, min_pixels, max_pixels)
        return
    assert smart_resize(height, width, factor, min_pixels, max_pixels) == tuple(expected)


# --- ImageGeometry ---------------------------------------------------------------------------------------

def test_geometry_from_size_and_grid_agree() -> None:
    geo = ImageGeometry.from_size(600, 450)
    assert (geo.resized_width, geo.resized_height) == (588, 448)
    # Qwen's processor reports image_grid_thw = (1, 448/14, 588/14) for this image.
    assert ImageGeometry.from_grid_thw(600, 450, torch.tensor([1, 32, 42])) == geo
    assert ImageGeometry.from_grid_thw(600, 450, (1, 32, 42)) == geo


def test_geometry_maps_full_image_and_clips() -> None:
    geo = ImageGeometry(width=1000, height=500, resized_width=448, resized_height=224)
    assert geo.to_model((0, 0, 1000, 500)) == pytest.approx((0, 0, 448, 224))
    assert geo.to_original((0, 0, 448, 224)) == pytest.approx((0, 0, 1000, 500))
    assert geo.to_original([224, 112, 448, 224]) == pytest.approx((500, 250, 1000, 500))
    t = geo.to_model(torch.tensor([[100.0, 50.0, 200.0, 100.0]]))
    torch.testing.assert_close(t, torch.tensor([[44.8, 22.4, 89.6, 44.8]]))
    assert geo.clip_to_original((-5, 10, 1200, 600)) == (0.0, 10.0, 1000.0, 500.0)
    clipped = clip_box(torch.tensor([[-5.0, 10.0, 1200.0, 600.0]]), 1000, 500)
    assert clipped.tolist() == [[0.0, 10.0, 1000.0, 500.0]]


def test_geometry_validation() -> None:
    for args in [(0, 10, 10, 10), (10, -1, 10, 10), (10, 10, 2.5, 10), (10, 10, 10, True)]:
        with pytest.raises(ValueError):
            ImageGeometry(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        ImageGeometry.from_size(0, 10)
    with pytest.raises(ValueError, match="grid_thw"):
        ImageGeometry.from_grid_thw(10, 10, (1, 2))
    geo = ImageGeometry(10, 10, 28, 28)
    with pytest.raises(dataclasses.FrozenInstanceError):
        geo.width = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="4 numbers"):
        geo.to_model((1, 2, 3))
    with pytest.raises(ValueError):
        geo.to_model(torch.zeros(2, 3))


@settings(deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), valid_boxes(), st.sampled_from([3136 * 4, 200704, 12845056]))
def test_geometry_round_trip(width: int, height: int, box: list[float], max_pixels: int) -> None:
    if max(width, height) / min(width, height) > 200:
        return
    geo = ImageGeometry.from_size(width, height, max_pixels=max_pixels)
    back = geo.to_original(geo.to_model(box))
    assert isinstance(back, tuple) and all(isinstance(v, float) for v in back)
    assert back == pytest.approx(box, rel=1e-12, abs=1e-9)
    t = torch.tensor(box, dtype=torch.float64)
    torch.testing.assert_close(geo.to_original(geo.to_model(t)), t, rtol=1e-12, atol=1e-9)
    assert geo.to_model(t).dtype == torch.float64
