"""Small PNG plots with Pillow only (no matplotlib): training curves, overlaid trajectories, boxes on images.

Used by the quickstart, the reproduction study and the notebook to show tau, hit rate and rewards over steps
and to draw ground-truth / predicted boxes. Non-finite values become gaps, never errors.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "EVENT_COLOUR", "GT_COLOUR", "HLINE_COLOUR", "PALETTE", "PRED_COLOUR", "draw_boxes", "plot_curves",
    "plot_overlay",
]

Colour = Union[tuple[int, int, int], str]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127),
)
EVENT_COLOUR = (150, 150, 150)
HLINE_COLOUR = (255, 160, 60)
GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 0, 0)
_BACKGROUND = (255, 255, 255)
_INK = (40, 40, 40)
_AXIS = (110, 110, 110)
_GRID = (236, 236, 236)
_LINE_WIDTH = 2


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _floats(values: Iterable[Any], name: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(math.nan)
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{i}] is not a number: {v!r}") from None
    return out


def _span(values: Iterable[float]) -> tuple[float, float] | None:
    finite = [v for v in values if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else None


def _widen(lo: float, hi: float) -> tuple[float, float]:
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.1 or 1.0
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float) -> list[float]:
    """The range ends plus 2-3 round values (1, 2, 2.5, 5 x 10^k steps) between them."""
    base = 10 ** math.floor(math.log10(hi - lo))
    for step in (m * base * f for f in (0.01, 0.1, 1.0) for m in (1, 2, 2.5, 5)):  # ascending
        inner = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
        inner = [v for v in inner if v - lo > 0.4 * step and hi - v > 0.4 * step]
        if len(inner) <= 3:
            if len(inner) >= 2:
                return [lo, *inner, hi]
            break
    return [lo, lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3, hi]


def _format(value: float, digits: int) -> str:
    if value == int(value) and abs(value) < 1e7:  # steps and counts: 1495, not 1.5e+03
        return str(int(value))
    text = f"{value:.{digits}g}"
    if "e" in text and 1e-4 <= abs(value) < 1e7:  # 1500 reads better than 1.5e+03
        text = f"{float(text):f}".rstrip("0").rstrip(".")
    return text


def _labels(values: Sequence[float]) -> list[str]:
    """Shortest labels (3+ significant digits) that tell the values apart."""
    for digits in range(3, 10):
        labels = [_format(v, digits) for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return labels


@dataclass
class _Axes:
    """Plot area in pixels and the data window it shows."""

    left: int
    top: int
    right: int
    bottom: int
    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.x0) / (self.x1 - self.x0)
        fy = (y - self.y0) / (self.y1 - self.y0)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)


def _dashed(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], colour: Colour,
            dash: int = 5, gap: int = 4) -> None:
    (xa, ya), (xb, yb) = start, end
    length = math.hypot(xb - xa, yb - ya)
    if length == 0:
        return
    pos = 0.0
    while pos < length:
        stop = min(pos + dash, length)
        draw.line([(xa + (xb - xa) * pos / length, ya + (yb - ya) * pos / length),
                   (xa + (xb - xa) * stop / length, ya + (yb - ya) * stop / length)], fill=colour, width=1)
        pos += dash + gap


def _polyline(draw: ImageDraw.ImageDraw, axes: _Axes, xs: Sequence[float], ys: Sequence[float],
              colour: Colour) -> None:
    """Connect consecutive finite points; a non-finite x or y breaks the line, a lone point becomes a dot."""
    run: list[tuple[float, float]] = []
    for x, y in [*zip(xs, ys), (math.nan, math.nan)]:
        if math.isfinite(x) and math.isfinite(y):
            run.append(axes.px(x, y))
            continue
        if len(run) == 1:
            (cx, cy), r = run[0], _LINE_WIDTH + 1
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif run:
            draw.line(run, fill=colour, width=_LINE_WIDTH, joint="curve")
        run = []


def _panel(img: Image.Image, box: tuple[int, int, int, int],
           curves: Sequence[tuple[Sequence[float], Sequence[float], Colour]], *, title: str = "",
           events: Sequence[float] = (), hlines: Sequence[float] = (), ylabel: str = "") -> None:
    """Draw one framed panel with ticks, grid, reference lines and curves inside ``box`` (l, t, r, b)."""
    draw = ImageDraw.Draw(img)
    font = _font()
    left, top, right, bottom = box
    _, line_h = _text_size(draw, "0.9Ag", font)
    if title:
        tw, _ = _text_size(draw, title, font)
        draw.text(((left + right - tw) / 2, top + 4), title, fill=_INK, font=font)
    xspan = _span(x for xs, ys, _ in curves for x, y in zip(xs, ys) if math.isfinite(y))
    yspan = _span([*(y for xs, ys, _ in curves for x, y in zip(xs, ys) if math.isfinite(x)), *hlines])
    plot_top = top + (line_h + 12 if title else 8)
    plot_bottom = bottom - line_h - 12
    if xspan is None or yspan is None:
        draw.rectangle([left + 8, plot_top, right - 8, plot_bottom], outline=_AXIS)
        msg = "empty"
        mw, mh = _text_size(draw, msg, font)
        draw.text(((left + right - mw) / 2, (plot_top + plot_bottom - mh) / 2), msg, fill=_AXIS, font=font)
        return
    xlo, xhi = _widen(*xspan)
    ylo, yhi = _widen(*yspan)
    xticks, yticks = _ticks(xlo, xhi), _ticks(ylo, yhi)
    xlabels, ylabels = _labels(xticks), _labels(yticks)
    label_w = max(_text_size(draw, s, font)[0] for s in ylabels)
    plot_left = left + label_w + 10 + (line_h + 6 if ylabel else 0)
    last_w = _text_size(draw, xlabels[-1], font)[0]
    plot_right = right - max(10, last_w // 2 + 4)
    # 4% headroom keeps lines at the extremes off the frame.
    ypad, xpad = 0.04 * (yhi - ylo), 0.02 * (xhi - xlo)
    axes = _Axes(plot_left, plot_top, plot_right, plot_bottom, xlo - xpad, xhi + xpad, ylo - ypad, yhi + ypad)

    for value, label in zip(yticks, ylabels):
        _, py = axes.px(xlo, value)
        draw.line([(plot_left, py), (plot_right, py)], fill=_GRID)
        tw, th = _text_size(draw, label, font)
        draw.text((plot_left - 6 - tw, py - th / 2 - 2), label, fill=_INK, font=font)
    for value, label in zip(xticks, xlabels):
        px, _ = axes.px(value, ylo)
        draw.line([(px, plot_top), (px, plot_bottom)], fill=_GRID)
        draw.line([(px, plot_bottom), (px, plot_bottom + 3)], fill=_AXIS)
        tw, _ = _text_size(draw, label, font)
        draw.text((px - tw / 2, plot_bottom + 5), label, fill=_INK, font=font)
    if ylabel:
        tw, th = _text_size(draw, ylabel, font)
        strip = Image.new("RGB", (tw + 4, th + 6), _BACKGROUND)
        ImageDraw.Draw(strip).text((2, 0), ylabel, fill=_INK, font=font)
        strip = strip.rotate(90, expand=True)
        img.paste(strip, (left + 2, int((plot_top + plot_bottom - strip.height) / 2)))
    draw.rectangle([plot_left, plot_top, plot_right, plot_bottom], outline=_AXIS)

    for value in hlines:
        if math.isfinite(value):
            _, py = axes.px(xlo, value)
            _dashed(draw, (plot_left + 1, py), (plot_right - 1, py), HLINE_COLOUR)
    for value in events:
        if math.isfinite(value) and axes.x0 <= value <= axes.x1:
            px, _ = axes.px(value, ylo)
            _dashed(draw, (px, plot_top + 1), (px, plot_bottom - 1), EVENT_COLOUR)
    for xs, ys, colour in curves:
        _polyline(draw, axes, xs, ys, colour)


def _save(img: Image.Image, path: str | Path | None) -> Image.Image:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="PNG")
    return img


def plot_curves(
    series: Mapping[str, Sequence[float]],
    x: Sequence[float] | None = None,
    path: str | Path | None = None,
    *,
    title: str = "",
    events: Sequence[float] = (),
    ncols: int = 2,
    panel_size: tuple[int, int] = (420, 240),
    hlines: Mapping[str, float] | None = None,
) -> Image.Image:
    """One panel per series (e.g. tau, hit_rate, reward_std), sharing ``x`` (default: the point index).

    ``events`` are x positions drawn as dashed vertical lines in every panel (e.g. tau raises); ``hlines`` maps a
    series name to a y value drawn as a dashed horizontal line in that panel (e.g. a target hit rate). NaN and
    infinite values leave gaps. Saves a PNG when ``path`` is given; returns the image either way.
    """
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    width, height = panel_size
    if width < 120 or height < 80:
        raise ValueError(f"panel_size must be at least (120, 80) pixels, got {panel_size}")
    hlines = dict(hlines or {})
    unknown = sorted(set(hlines) - set(series))
    if unknown:
        raise ValueError(f"hlines names series that are not plotted: {unknown}; series are {sorted(series)}")
    xs = None if x is None else _floats(x, "x")
    event_xs = _floats(events, "events")
    panels = []
    for name, values in series.items():
        ys = _floats(values, f"series[{name!r}]")
        if xs is not None and len(xs) != len(ys):
            raise ValueError(f"series {name!r} has {len(ys)} values but x has {len(xs)}")
        panels.append((name, xs if xs is not None else [float(i) for i in range(len(ys))], ys))

    count = max(len(panels), 1)
    cols = min(ncols, count)
    rows = math.ceil(count / cols)
    font = _font()
    title_h = _text_size(ImageDraw.Draw(Image.new("RGB", (1, 1))), title, font)[1] + 14 if title else 0
    img = Image.new("RGB", (cols * width, title_h + rows * height), _BACKGROUND)
    if title:
        draw = ImageDraw.Draw(img)
        tw, _ = _text_size(draw, title, font)
        draw.text(((img.width - tw) / 2, 6), title, fill=_INK, font=font)
    if not panels:
        _panel(img, (0, title_h, width, title_h + height), [], title="no series")
    for i, (name, px, py) in enumerate(panels):
        left, top = (i % cols) * width, title_h + (i // cols) * height
        extra = [float(hlines[name])] if name in hlines else []
        _panel(img, (left, top, left + width, top + height), [(px, py, PALETTE[i % len(PALETTE)])],
               title=name, events=event_xs, hlines=extra)
    return _save(img, path)


def plot_overlay(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path | None = None,
    *,
    title: str = "",
    ylabel: str = "",
) -> Image.Image:
    """Several labelled (x, y) curves in one panel with a legend, e.g. the tau trajectories of several schedules."""
    prepared = []
    for i, (name, pair) in enumerate(curves.items()):
        if len(pair) != 2:
            raise ValueError(f"curves[{name!r}] must be an (x, y) pair, got {len(pair)} items")
        xs, ys = _floats(pair[0], f"curves[{name!r}].x"), _floats(pair[1], f"curves[{name!r}].y")
        if len(xs) != len(ys):
            raise ValueError(f"curves[{name!r}] has {len(xs)} x values but {len(ys)} y values")
        prepared.append((name, xs, ys, PALETTE[i % len(PALETTE)]))

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    swatch = 18
    legend_w = max((_text_size(probe, name, font)[0] for name, *_ in prepared), default=0)
    legend_w = legend_w + swatch + 24 if prepared else 0
    plot_w, height = 560, 340
    img = Image.new("RGB", (plot_w + legend_w, height), _BACKGROUND)
    _panel(img, (0, 0, plot_w, height), [(xs, ys, colour) for _, xs, ys, colour in prepared],
           title=title, ylabel=ylabel)
    draw = ImageDraw.Draw(img)
    _, line_h = _text_size(draw, "Ag", font)
    y = 30
    for name, _, _, colour in prepared:
        mid = y + line_h / 2 + 2
        draw.line([(plot_w + 4, mid), (plot_w + 4 + swatch, mid)], fill=colour, width=3)
        draw.text((plot_w + swatch + 10, y), name, fill=_INK, font=font)
        y += line_h + 10
    return _save(img, path)


Box = Union[Sequence[float], None]


def draw_boxes(image: Image.Image, boxes: Sequence[tuple[Box, Colour, str | None]]) -> Image.Image:
    """Copy of ``image`` (as RGB) with each (box, colour, label) drawn: xyxy pixel box outline and a small tag.

    Boxes that are None or hold a non-finite coordinate (e.g. an unparsable prediction) are skipped. Convention:
    ground truth in ``GT_COLOUR`` (green), prediction in ``PRED_COLOUR`` (red).
    """
    out = image.convert("RGB")  # always a copy, also for RGB input
    draw = ImageDraw.Draw(out)
    font = _font()
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
        if not all(math.isfinite(c) for c in coords):
            continue
        x1, x2 = sorted(coords[0::2])
        y1, y2 = sorted(coords[1::2])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        if label:
            tw, th = _text_size(draw, label, font)
            ty = y1 - th - 6 if y1 - th - 6 >= 0 else y1 + width
            draw.rectangle([x1, ty, x1 + tw + 6, ty + th + 6], fill=colour)
            draw.text((x1 + 3, ty + 1), label, fill=(255, 255, 255), font=font)
    return out
