"""PIL plots: sizes, PNG output, and that lines, events, gaps and boxes land on the expected pixels."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from medloc_lightning.plotting import (
    EVENT_COLOUR, GT_COLOUR, HLINE_COLOUR, PALETTE, PRED_COLOUR, draw_boxes, plot_curves, plot_overlay,
)

NAN, INF = float("nan"), float("inf")
PANEL = (300, 200)


def pixels_of(img: Image.Image, colour, region=None) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of pixels exactly equal to ``colour``, optionally inside region (l, t, r, b)."""
    arr = np.asarray(img.convert("RGB")).astype(int)
    hit = (arr == np.array(colour)).all(axis=-1)
    if region is not None:
        left, top, right, bottom = region
        keep = np.zeros_like(hit)
        keep[top:bottom, left:right] = True
        hit &= keep
    return np.nonzero(hit)


def test_sizes_follow_panels_and_columns():
    three = plot_curves({"a": [1, 2], "b": [2, 1], "c": [0, 0]}, ncols=2, panel_size=PANEL)
    assert three.size == (600, 400) and three.mode == "RGB"
    one = plot_curves({"a": [1, 2]}, ncols=2, panel_size=PANEL)
    assert one.size == (300, 200)
    titled = plot_curves({"a": [1, 2]}, panel_size=PANEL, title="run 1")
    assert titled.width == 300 and titled.height > 200
    assert plot_curves({}, panel_size=PANEL).size == (300, 200)


def test_saves_a_valid_png(tmp_path):
    path = tmp_path / "nested" / "curves.png"
    img = plot_curves({"tau": [0.3, 0.3, 0.45]}, [0, 10, 20], path, title="tau", events=[15])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as loaded:
        loaded.verify()
    with Image.open(path) as loaded:
        assert loaded.format == "PNG" and loaded.size == img.size
        assert (np.asarray(loaded.convert("RGB")) == np.asarray(img)).all()


@pytest.mark.parametrize("direction", ["rising", "falling"])
def test_line_goes_from_corner_to_corner(direction):
    values = list(range(50)) if direction == "rising" else list(range(50, 0, -1))
    img = plot_curves({"s": values}, panel_size=PANEL)
    ys, xs = pixels_of(img, PALETTE[0])
    assert len(xs) > 100
    assert xs.max() - xs.min() > 0.6 * PANEL[0]  # the line spans the plot width
    left_y = ys[xs <= xs.min() + 2].mean()
    right_y = ys[xs >= xs.max() - 2].mean()
    bottom, top = 0.6 * PANEL[1], 0.4 * PANEL[1]
    if direction == "rising":  # bottom-left to top-right (image y grows downwards)
        assert left_y > bottom and right_y < top
        assert xs.min() < 0.3 * PANEL[0] and xs.max() > 0.8 * PANEL[0]
    else:
        assert left_y < top and right_y > bottom


def line_extent(img, colour=PALETTE[0]):
    _, xs = pixels_of(img, colour)
    return xs.min() + 1, xs.max() - 1  # centre of a 2-pixel-wide line at the first and last point


def test_event_lines_at_their_x_positions():
    img = plot_curves({"s": list(range(101))}, list(range(101)), panel_size=PANEL, events=[25, 75, 500, NAN])
    x_at_0, x_at_100 = line_extent(img)
    _, xs = pixels_of(img, EVENT_COLOUR)
    columns = sorted(set(xs.tolist()))
    assert len(columns) == 2  # 500 is off the axis and NaN is ignored
    for column, event in zip(columns, (25, 75)):
        assert column == pytest.approx(x_at_0 + event / 100 * (x_at_100 - x_at_0), abs=2)
    ys, _ = pixels_of(img, EVENT_COLOUR)
    assert ys.max() - ys.min() > 0.5 * PANEL[1]  # runs over the plot height
    assert len(pixels_of(plot_curves({"s": list(range(101))}, panel_size=PANEL), EVENT_COLOUR)[0]) == 0


def test_nan_leaves_a_gap_and_lone_points_become_dots():
    values = [float(i) for i in range(11)]
    values[4:7] = [NAN, INF, NAN]
    img = plot_curves({"s": values}, panel_size=PANEL)
    x_at_0, x_at_10 = line_extent(img)
    px = lambda i: x_at_0 + i / 10 * (x_at_10 - x_at_0)  # noqa: E731
    _, xs = pixels_of(img, PALETTE[0])
    assert not ((xs > px(3) + 3) & (xs < px(7) - 3)).any()
    assert ((xs > px(1)) & (xs < px(2))).any() and ((xs > px(8)) & (xs < px(9))).any()

    lone = plot_curves({"s": [0.0, NAN, 5.0, NAN, 10.0]}, panel_size=PANEL)
    ys, xs = pixels_of(lone, PALETTE[0])
    assert len(xs) > 0
    centre = (xs.min() + xs.max()) / 2
    assert ((xs > centre - 4) & (xs < centre + 4)).sum() >= 9  # a dot at the middle point


def test_degenerate_series_do_not_crash():
    img = plot_curves(
        {"constant": [0.5] * 20, "single": [3.0], "empty": [], "all_nan": [NAN, NAN], "inf": [INF, -INF, 1.0],
         "zero": [0, 0, 0], "tiny": [0.3, 0.3 + 1e-12], "huge": [1e30, -1e30]},
        ncols=4, panel_size=PANEL,
    )
    assert img.size == (4 * PANEL[0], 2 * PANEL[1])
    ys, xs = pixels_of(img, PALETTE[0], region=(0, 0, PANEL[0], PANEL[1]))
    assert xs.max() - xs.min() > 0.6 * PANEL[0] and ys.max() - ys.min() <= 2  # a flat line
    ys, xs = pixels_of(img, PALETTE[1], region=(PANEL[0], 0, 2 * PANEL[0], PANEL[1]))
    assert 0 < len(xs) and xs.max() - xs.min() <= 10  # a single dot


def test_each_panel_gets_its_own_colour_and_hline():
    img = plot_curves({"tau": [0.3, 0.5], "hit_rate": [0.2, 0.9]}, panel_size=PANEL, hlines={"hit_rate": 0.7})
    first, second = (0, 0, PANEL[0], PANEL[1]), (PANEL[0], 0, 2 * PANEL[0], PANEL[1])
    assert len(pixels_of(img, PALETTE[0], first)[0]) > 0 and len(pixels_of(img, PALETTE[1], second)[0]) > 0
    assert len(pixels_of(img, PALETTE[1], first)[0]) == 0
    assert len(pixels_of(img, HLINE_COLOUR, first)[0]) == 0
    ys, xs = pixels_of(img, HLINE_COLOUR, second)
    assert len(set(ys.tolist())) == 1 and xs.max() - xs.min() > 0.6 * PANEL[0]
    # 0.7 sits between the line's ends at 0.2 (bottom) and 0.9 (top), nearer the top.
    line_ys, _ = pixels_of(img, PALETTE[1], second)
    frac = (line_ys.max() - ys[0]) / (line_ys.max() - line_ys.min())
    assert frac == pytest.approx((0.7 - 0.2) / (0.9 - 0.2), abs=0.05)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: plot_curves({"a": [1, 2]}, hlines={"b": 1.0}), "hlines"),
        (lambda: plot_curves({"a": [1, 2, 3]}, x=[0, 1]), "'a' has 3 values but x has 2"),
        (lambda: plot_curves({"a": [1, "x"]}), r"series\['a'\]\[1\]"),
        (lambda: plot_curves({"a": [1]}, ncols=0), "ncols"),
        (lambda: plot_curves({"a": [1]}, panel_size=(10, 10)), "panel_size"),
        (lambda: plot_overlay({"a": ([0, 1], [0])}), "'a'"),
        (lambda: plot_overlay({"a": ([0, 1],)}), "pair"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_overlay_draws_every_curve_and_a_legend(tmp_path):
    steps = list(range(0, 100, 5))
    curves = {
        "piecewise": (steps, [0.3 if s < 50 else 0.45 for s in steps]),
        "linear": (steps, [0.3 + 0.005 * s for s in steps]),
        "with gaps": (steps, [NAN if 20 < s < 60 else 0.6 for s in steps]),
    }
    img = plot_overlay(curves, tmp_path / "tau.png", title="tau", ylabel="tau")
    assert (tmp_path / "tau.png").exists()
    for i in range(3):
        ys, xs = pixels_of(img, PALETTE[i])
        assert len(xs) > 20
    # Legend: one swatch per curve right of the plot frame (the rightmost long vertical run of axis
    # grey), stacked in insertion order.
    arr = np.asarray(img).astype(int)
    frame_cols = np.nonzero(((arr == (110, 110, 110)).all(axis=-1)).sum(axis=0) > 100)[0]
    frame_right = frame_cols.max()
    swatch_rows = []
    for i in range(3):
        ys, xs = pixels_of(img, PALETTE[i], region=(frame_right + 1, 0, img.width, img.height))
        assert len(xs) >= 15, i
        swatch_rows.append(ys.mean())
    assert swatch_rows == sorted(swatch_rows)
    longer = plot_overlay({"a much longer schedule name": curves["linear"]})
    shorter = plot_overlay({"a": curves["linear"]})
    assert longer.width > shorter.width and longer.height == shorter.height
    assert plot_overlay({}).size[0] > 0


def test_draw_boxes_colours_the_edges_and_leaves_the_rest():
    base = Image.new("L", (120, 100), 50)  # grayscale like most medical images
    gt, pred = (10, 20, 60, 80), (70.4, 30.2, 110.6, 90.9)
    out = draw_boxes(base, [(gt, GT_COLOUR, "GT"), (pred, PRED_COLOUR, None), (None, PRED_COLOUR, "none"),
                            ((NAN, 0, 5, 5), PRED_COLOUR, "nan"), ((0, 0, INF, 5), PRED_COLOUR, "inf")])
    assert out.mode == "RGB" and out.size == base.size and base.mode == "L"
    px = out.load()
    assert px[10, 50] == GT_COLOUR and px[59, 50] == GT_COLOUR and px[35, 79] == GT_COLOUR
    assert px[35, 50] == (50, 50, 50)  # inside: untouched
    assert px[70, 60] == PRED_COLOUR and px[90, 90] == PRED_COLOUR
    assert px[2, 2] == (50, 50, 50)  # skipped boxes drew nothing
    # The label tag above the GT box is filled with the box colour.
    assert len(pixels_of(out, GT_COLOUR, region=(10, 0, 40, 19))[0]) > 20
    assert len(pixels_of(out, PRED_COLOUR, region=(0, 0, 8, 8))[0]) == 0


def test_draw_boxes_copies_and_normalises():
    base = Image.new("RGB", (50, 50), (0, 0, 0))
    out = draw_boxes(base, [((40, 40, 10, 10), "red", "")])  # inverted corners, a colour name
    assert base.getpixel((10, 25)) == (0, 0, 0)  # the input is not modified
    same = draw_boxes(base, [((10, 10, 40, 40), (255, 0, 0), "")])
    assert (np.asarray(out) == np.asarray(same)).all() and out.getpixel((10, 25)) == (255, 0, 0)
    assert (np.asarray(draw_boxes(base, [])) == np.asarray(base)).all()
    with pytest.raises(ValueError, match=r"boxes\[0\].box"):
        draw_boxes(base, [((1, 2, 3), "red", "")])
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        draw_boxes(base, [((1, 2, 3, 4), "red")])


def test_labels_are_readable_numbers():
    from medloc_lightning.plotting import _labels, _ticks

    assert _labels(_ticks(0, 1495)) == ["0", "500", "1000", "1495"]
    ticks = _ticks(0.133, 1.0)
    assert ticks[0] == 0.133 and ticks[-1] == 1.0 and 4 <= len(ticks) <= 5
    assert all(math.isclose(v * 10, round(v * 10)) for v in ticks[1:-1])
    labels = _labels(_ticks(0.3, 0.30002))
    assert len(set(labels)) == len(labels)
