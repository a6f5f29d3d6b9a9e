"""Figures: training curves and overlaid runs drawn with matplotlib (Agg, no display), boxes drawn on images with PIL.

The curriculum callback, the reproduction study and the notebook use these to show τ, the window statistics and
their thresholds over the optimizer steps; `draw_boxes` marks ground-truth and predicted boxes for TensorBoard.
Non-finite values become gaps, never errors.
"""
from __future__ import annotations

import io
import math
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "GT_COLOUR", "LABELS", "PRED_COLOUR", "PlotFigure", "draw_boxes", "plot_curves", "plot_overlay",
]

Colour = Union[tuple[int, int, int], str]
GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 0, 0)

LABELS: dict[str, str] = {
    "tau": r"IoU threshold $\tau$",
    "hit_rate": r"hit rate $\bar{r}$ (IoU $\geq \tau$)",
    "reward_std": r"hit-rate std $\sigma$",
    "iou_margin": r"IoU margin $\bar{m}$ (IoU $-\ \tau$)",
    "mean_iou": "mean IoU",
}
"""Axis labels of the curriculum's series (all are IoU fractions or IoU differences, so they carry no unit)."""

THRESHOLD_STYLE = {"color": "0.15", "linestyle": "--", "linewidth": 1.1}
EVENT_STYLE = {"color": "0.55", "linestyle": ":", "linewidth": 1.0}
DPI = 150


class PlotFigure(Figure):
    """A matplotlib Figure on the Agg canvas that Jupyter shows inline as a PNG, without pyplot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()


def _floats(values: Iterable[Any], name: str) -> np.ndarray:
    """Numbers (None and non-finite become NaN: a gap); anything else is an error naming ``name[i]``."""
    out = []
    for i, v in enumerate(values):
        try:
            out.append(math.nan if v is None else float(v))
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{i}] is not a number: {v!r}") from None
    arr = np.asarray(out, dtype=float)
    arr[~np.isfinite(arr)] = np.nan
    return arr


def _save(fig: PlotFigure, path: str | Path | None) -> PlotFigure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    return fig


def _style(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.grid(True, color="0.92", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


def _threshold(ax: Axes, x: np.ndarray, value: Any, label: str, name: str) -> None:
    """A constant as a horizontal line, or one value per x as a step line (it moves only when τ does)."""
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            ax.axhline(float(value), label=label, **THRESHOLD_STYLE)
        return
    ys = _floats(value, f"thresholds[{name!r}]")
    if len(ys) != len(x):
        raise ValueError(f"thresholds[{name!r}] has {len(ys)} values but x has {len(x)}")
    ax.plot(x, ys, drawstyle="steps-post", label=label, **THRESHOLD_STYLE)


def plot_curves(
    series: Mapping[str, Sequence[float]],
    x: Sequence[float] | None = None,
    path: str | Path | None = None,
    *,
    title: str = "",
    events: Sequence[float] = (),
    ncols: int = 2,
    panel_size: tuple[float, float] = (4.0, 2.4),
    thresholds: Mapping[str, tuple[str, float | Sequence[float]]] | None = None,
    labels: Mapping[str, str] | None = None,
    xlabel: str = "optimizer step",
    event_label: str = r"$\tau$ raised",
    stepwise: Collection[str] = ("tau",),
) -> PlotFigure:
    """One panel per series (e.g. tau, hit_rate, reward_std), sharing ``x`` (default: the point index).

    ``thresholds`` maps a series to ``(label, value)``: a number is drawn as a dashed horizontal line, a sequence
    (one value per x, e.g. P_τ over the steps) as a dashed step line. ``events`` are x positions (e.g. τ raises)
    drawn as dotted vertical lines in every panel and as triangles on the first series; those outside the
    plotted x range are left out. Series in ``stepwise`` change only at events and are drawn as step lines.
    ``labels`` overrides the y-axis labels (default: `LABELS`, else the series name); ``panel_size`` is in
    inches. NaN and infinite values leave gaps. Saves a PNG when ``path`` is given; returns the Figure.
    """
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    if min(panel_size) <= 0:
        raise ValueError(f"panel_size must be positive (inches), got {panel_size}")
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(series))
    if unknown:
        raise ValueError(f"thresholds names series that are not plotted: {unknown}; series are {sorted(series)}")
    labels = {**LABELS, **(labels or {})}
    xs = None if x is None else _floats(x, "x")
    panels = []
    for name, values in series.items():
        ys = _floats(values, f"series[{name!r}]")
        if xs is not None and len(xs) != len(ys):
            raise ValueError(f"series {name!r} has {len(ys)} values but x has {len(xs)}")
        panels.append((name, xs if xs is not None else np.arange(len(ys), dtype=float), ys))

    finite_x = np.concatenate([px[np.isfinite(py)] for _, px, py in panels] or [np.zeros(0)])
    finite_x = finite_x[np.isfinite(finite_x)]
    event_xs = [e for e in _floats(events, "events")  # NaN and events outside the plotted steps are left out
                if finite_x.size and finite_x.min() <= e <= finite_x.max()]
    cols = min(ncols, max(len(panels), 1))
    rows = math.ceil(max(len(panels), 1) / cols)
    fig = PlotFigure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if not panels:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no series", ha="center", va="center", transform=axes[0].transAxes, color="0.5")
    for i, (ax, (name, px, py)) in enumerate(zip(axes, panels)):
        _style(ax)
        style = "steps-post" if name in stepwise else "default"
        ax.plot(px, py, color=f"C{i % 10}", linewidth=1.4, drawstyle=style)
        if name in thresholds:
            label, value = thresholds[name]
            _threshold(ax, px, value, label, name)
        for e in event_xs:
            ax.axvline(e, label=event_label if i == 0 and e == event_xs[0] else None, **EVENT_STYLE)
        if i == 0 and event_xs:
            _mark_events(ax, px, py, event_xs, color=f"C{i % 10}")
        if not np.isfinite(py).any():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_ylabel(labels.get(name, name), fontsize=9)
        if i >= len(panels) - cols:  # bottom panel of its column
            ax.set_xlabel(xlabel, fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _mark_events(ax: Axes, xs: np.ndarray, ys: np.ndarray, events: Sequence[float], color: str) -> None:
    """Triangles on the curve at each event: the first point at or after it (the value once τ has moved)."""
    points = []
    for e in events:
        after = np.nonzero((xs >= e) & np.isfinite(ys))[0]
        if after.size:
            points.append((xs[after[0]], ys[after[0]]))
    if points:
        px, py = zip(*points)
        ax.plot(px, py, linestyle="none", marker="^", markersize=6, color=color, markeredgecolor="white",
                zorder=3)


def plot_overlay(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float] | Sequence[Sequence[float]]]],
    path: str | Path | None = None,
    *,
    title: str = "",
    ylabel: str = "",
    xlabel: str = "optimizer step",
    size: tuple[float, float] = (6.4, 3.4),
) -> PlotFigure:
    """Several labelled curves in one panel with a legend, e.g. the τ trajectories of several schedules.

    Each entry is ``(x, y)``. ``y`` is one run, or one row per seed: then the line is the mean over seeds and a
    shaded band spans their minimum to maximum at each x. Saves a PNG when ``path`` is given; returns the Figure.
    """
    prepared = []
    for name, pair in curves.items():
        if len(pair) != 2:
            raise ValueError(f"curves[{name!r}] must be an (x, y) pair, got {len(pair)} items")
        xs = _floats(pair[0], f"curves[{name!r}].x")
        raw = list(pair[1])
        nested = bool(raw) and all(isinstance(r, Iterable) and not isinstance(r, str) for r in raw)
        runs = [_floats(r, f"curves[{name!r}].y[{k}]") for k, r in enumerate(raw)] if nested \
            else [_floats(raw, f"curves[{name!r}].y")]
        for k, ys in enumerate(runs):
            if len(ys) != len(xs):
                where = f"y[{k}]" if nested else "y"
                raise ValueError(f"curves[{name!r}] has {len(xs)} x values but {len(ys)} values in {where}")
        prepared.append((name, xs, np.vstack(runs) if runs else np.zeros((1, 0))))

    fig = PlotFigure(figsize=size, layout="constrained")
    ax = fig.subplots()
    _style(ax)
    for i, (name, xs, ys) in enumerate(prepared):
        colour = f"C{i % 10}"
        seeds = ys.shape[0]
        if seeds == 1:
            ax.plot(xs, ys[0], color=colour, linewidth=1.5, label=name)
            continue
        mean, low, high = _over_seeds(ys)
        ax.plot(xs, mean, color=colour, linewidth=1.5, label=f"{name} (mean of {seeds} seeds)")
        ax.fill_between(xs, low, high, color=colour, alpha=0.18, linewidth=0)
    if not prepared:
        ax.text(0.5, 0.5, "no curves", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(LABELS.get(ylabel, ylabel), fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    if prepared:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _over_seeds(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, minimum and maximum over the rows; an all-NaN column stays NaN (a gap) without NumPy's warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)


Box = Union[Sequence[float], None]


def draw_boxes(image: Image.Image, boxes: Sequence[tuple[Box, Colour, str | None]]) -> Image.Image:
    """Copy of ``image`` (as RGB) with each (box, colour, label) drawn: xyxy pixel box outline and a small tag.

    Boxes that are None or hold a non-finite coordinate (e.g. an unparsable prediction) are skipped. Convention:
    ground truth in ``GT_COLOUR`` (green), prediction in ``PRED_COLOUR`` (red).
    """
    out = image.convert("RGB")  # always a copy, also for RGB input
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = max(2, round(min(out.size) / 150))
    for i, entry in enumerate(boxes):
        if len(entry) != 3:
            raise ValueError(f"boxes[{i}] must be (box, colour, label), got {len(entry)} items")
        box, colour, label = entry
        if box is None:
            continue
        coords = _floats(box, f"boxes[{i}].box")
        if len(coords) != 4:
            raise ValueError(f"boxes[{i}].box must have 4 coordinates (x1, y1, x2, y2), got {len(coords)}")
        if not np.isfinite(coords).all():
            continue
        x1, x2 = sorted(coords[0::2].tolist())
        y1, y2 = sorted(coords[1::2].tolist())
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        if label:
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            tw, th = right - left, bottom - top
            ty = y1 - th - 6 if y1 - th - 6 >= 0 else y1 + width
            draw.rectangle([x1, ty, x1 + tw + 6, ty + th + 6], fill=colour)
            draw.text((x1 + 3, ty + 1), label, fill=(255, 255, 255), font=font)
    return out
