"""Figures: what is drawn on which panel (read back from the matplotlib objects), the PNG files, and boxes on images."""
from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from PIL import Image

from medloc_lightning.plotting import GT_COLOUR, LABELS, PRED_COLOUR, draw_boxes, plot_curves, plot_overlay

NAN, INF = float("nan"), float("inf")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def line_labelled(ax, label):
    [line] = [line for line in ax.get_lines() if line.get_label() == label]
    return line


def vertical_lines_at(ax):
    return sorted(line.get_xdata()[0] for line in ax.get_lines()
                  if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
                  and line.get_linestyle() == ":")


def test_one_labelled_panel_per_series_saved_as_png(tmp_path):
    path = tmp_path / "nested" / "curves.png"
    fig = plot_curves({"tau": [0.3, 0.3, 0.45], "hit_rate": [0.2, 0.5, 0.9], "custom": [1, 2, 3]}, [10, 20, 30], path,
                      title="run 1", labels={"custom": "custom (px)"})
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as png:
        assert png.width > 600 and png.height > 400
    axes = visible_axes(fig)
    assert [ax.get_ylabel() for ax in axes] == [LABELS["tau"], LABELS["hit_rate"], "custom (px)"]
    # 2 columns: the bottom panel of each column names the x axis
    assert [ax.get_xlabel() for ax in axes] == ["", "optimizer step", "optimizer step"]
    assert fig.get_suptitle() == "run 1"
    assert fig._repr_png_()[:8] == PNG_MAGIC  # what Jupyter shows inline


def test_thresholds_are_step_lines_or_constant_lines_on_their_panel():
    steps = [1, 2, 3, 4]
    p_tau = [0.8, 0.8, 0.7, 0.7]
    fig = plot_curves({"tau": [0.3, 0.3, 0.45, 0.45], "hit_rate": [0.5, 0.9, 0.6, 0.8], "iou_margin": [0, .1, .2, .1]},
                      steps, thresholds={"hit_rate": ("P", p_tau), "iou_margin": ("D", 0.1)})
    tau_ax, hit_ax, margin_ax = visible_axes(fig)
    p = line_labelled(hit_ax, "P")
    assert p.get_drawstyle() == "steps-post"
    assert list(p.get_xdata()) == steps and list(p.get_ydata()) == p_tau
    d = line_labelled(margin_ax, "D")
    assert list(d.get_ydata()) == [0.1, 0.1]  # axhline: constant across the panel
    assert {"P", "D"}.isdisjoint(line.get_label() for line in tau_ax.get_lines())
    assert [t.get_text() for t in hit_ax.get_legend().get_texts()] == ["P"]


def test_raises_are_marked_in_every_panel_and_on_the_first_curve():
    steps = list(range(1, 21))
    tau = [0.3] * 7 + [0.45] * 8 + [0.55] * 5
    fig = plot_curves({"tau": tau, "hit_rate": np.linspace(0, 1, 20)}, steps, events=[8, 16, NAN, 500])
    for ax in visible_axes(fig):
        assert vertical_lines_at(ax) == [8, 16]  # NaN and 500 (past the last step) are left out
        assert ax.get_xlim()[1] < 25
    [triangles] = [line for line in visible_axes(fig)[0].get_lines() if line.get_marker() == "^"]
    assert list(triangles.get_xdata()) == [8, 16] and list(triangles.get_ydata()) == [0.45, 0.55]
    assert line_labelled(visible_axes(fig)[0], r"$\tau$ raised").get_linestyle() == ":"
    assert visible_axes(fig)[0].get_lines()[0].get_drawstyle() == "steps-post"  # τ only moves at raises


def test_non_finite_values_are_gaps_and_empty_panels_say_so():
    fig = plot_curves({"gaps": [0.0, NAN, INF, 3.0], "all_nan": [NAN, NAN], "empty": []}, ncols=3)
    gaps, all_nan, empty = visible_axes(fig)
    ys = gaps.get_lines()[0].get_ydata()
    assert ys[0] == 0.0 and math.isnan(ys[1]) and math.isnan(ys[2]) and ys[3] == 3.0
    for ax in (all_nan, empty):
        assert [t.get_text() for t in ax.texts] == ["no data"]
    assert plot_curves({}).axes[0].texts[0].get_text() == "no series"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: plot_curves({"a": [1, 2]}, thresholds={"b": ("B", 1.0)}), "thresholds names series"),
        (lambda: plot_curves({"a": [1, 2]}, thresholds={"a": ("A", [1.0])}), r"thresholds\['a'\] has 1 values"),
        (lambda: plot_curves({"a": [1, 2, 3]}, x=[0, 1]), "'a' has 3 values but x has 2"),
        (lambda: plot_curves({"a": [1, "x"]}), r"series\['a'\]\[1\]"),
        (lambda: plot_curves({"a": [1]}, ncols=0), "ncols"),
        (lambda: plot_overlay({"a": ([0, 1], [0])}), r"curves\['a'\] has 2 x values but 1 values in y"),
        (lambda: plot_overlay({"a": ([0, 1], [[0, 1], [0]])}), r"in y\[1\]"),
        (lambda: plot_overlay({"a": ([0, 1],)}), "pair"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_overlay_draws_each_curve_with_a_legend(tmp_path):
    steps = list(range(0, 100, 5))
    curves = {"piecewise": (steps, [0.3 if s < 50 else 0.45 for s in steps]),
              "linear": (steps, [0.3 + 0.005 * s for s in steps])}
    fig = plot_overlay(curves, tmp_path / "tau.png", title="tau per step", ylabel="tau")  # reproduce.py's call
    assert (tmp_path / "tau.png").read_bytes()[:8] == PNG_MAGIC
    [ax] = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["piecewise", "linear"]
    assert ax.get_ylabel() == LABELS["tau"] and ax.get_xlabel() == "optimizer step" and ax.get_title() == "tau per step"
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]  # one run each: no band


def test_overlay_shows_seeds_as_a_band_around_their_mean():
    steps = [0, 1, 2, 3]
    seeds = [[0.3, 0.3, 0.45, 0.45], [0.3, 0.45, 0.45, 0.55], [0.3, 0.3, 0.3, NAN]]
    fig = plot_overlay({"medloc": (steps, seeds), "fixed": (steps, [0.5] * 4)}, ylabel="tau")
    [ax] = fig.axes
    mean = line_labelled(ax, "medloc (mean of 3 seeds)")
    assert np.allclose(mean.get_ydata(), [0.3, 0.35, 0.4, 0.5])  # NaN seeds are left out of the mean
    [band] = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert tuple(band.get_facecolor()[0][:3]) == pytest.approx(to_rgb(mean.get_color()))  # the curve's colour
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(0.3) and ys.max() == pytest.approx(0.55)  # min..max over the seeds
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["medloc (mean of 3 seeds)", "fixed"]


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
    arr = np.asarray(out)
    assert (arr[0:19, 10:40] == GT_COLOUR).all(-1).sum() > 20  # the label tag above the GT box


def test_draw_boxes_copies_and_names_bad_boxes():
    base = Image.new("RGB", (50, 50), (0, 0, 0))
    out = draw_boxes(base, [((40, 40, 10, 10), "red", "")])  # inverted corners, a colour name
    assert base.getpixel((10, 25)) == (0, 0, 0) and out.getpixel((10, 25)) == (255, 0, 0)
    with pytest.raises(ValueError, match=r"boxes\[0\].box must have 4"):
        draw_boxes(base, [((1, 2, 3), "red", "")])
    with pytest.raises(ValueError, match=r"boxes\[0\] must be \(box, colour, label\)"):
        draw_boxes(base, [((1, 2, 3, 4), "red")])
