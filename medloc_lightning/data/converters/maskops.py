"""Segmentation mask -> bounding box: mask reading, tight boxes and 8-connected components (numpy only).

Boxes are ``(x1, y1, x2, y2)`` integer pixel edges with x2/y2 exclusive: x1 = min column, x2 = max column + 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from medloc_lightning.data.converters.common import Skip
from medloc_lightning.data.images import image_size
from medloc_lightning.errors import ConfigError, DataError

Box = tuple[int, int, int, int]
JPEG_THRESHOLD = 127  # lossy masks ring around edges; "nonzero" would inflate every box


@dataclass(frozen=True)
class Component:
    """One 8-connected foreground region: its pixel count and tight box."""

    area: int
    box: Box


def read_mask_values(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """The mask as a 2-D numeric array and whether the file is a JPEG.

    Palette masks give their palette indices, colour masks the max over R, G, B (any coloured pixel counts),
    16-bit and float masks their raw values.
    """
    with Image.open(path) as im:
        im.load()
        is_jpeg = im.format == "JPEG"
        if im.mode in ("1", "P", "L", "I", "F") or im.mode.startswith("I;16"):
            values = np.asarray(im)
        elif im.mode in ("RGB", "RGBA", "LA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
            values = np.asarray(im.convert("RGB")).max(axis=2)
        else:
            values = np.asarray(im.convert("L"))
    return values, is_jpeg


def default_threshold(is_jpeg: bool) -> int:
    """Foreground is ``value > threshold``: 0 (any nonzero pixel) for lossless masks, 127 for JPEG masks."""
    return JPEG_THRESHOLD if is_jpeg else 0


def read_mask(path: str | os.PathLike, threshold: float | None = None) -> np.ndarray:
    """Boolean foreground (``value > threshold``; ``None`` = :func:`default_threshold` of the file type)."""
    values, is_jpeg = read_mask_values(path)
    return values > (default_threshold(is_jpeg) if threshold is None else threshold)


def tight_box(fg: np.ndarray) -> Box | None:
    """Box of all foreground pixels, or None for an empty mask."""
    cols = np.flatnonzero(fg.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(fg.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _runs(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal foreground runs in raster order: row, start column, end column (exclusive)."""
    h, w = fg.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = fg
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def _root_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over edges (a[i], b[i]) done in bulk: hook the larger root under the smaller, compress."""
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        np.minimum.at(parent, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
        while True:  # pointer jumping until every node points at a root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def connected_components(fg: np.ndarray) -> list[Component]:
    """8-connected components of a boolean mask, ordered by their first pixel in raster order.

    Works on runs rather than pixels: runs in adjacent rows touch when their column spans overlap or meet
    diagonally, found with two ``searchsorted`` calls; the run graph is then merged by :func:`_root_labels`.
    """
    fg = np.asarray(fg, dtype=bool)
    if fg.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {fg.shape}")
    rows, starts, ends = _runs(fg)
    n = rows.size
    if n == 0:
        return []
    stride = fg.shape[1] + 2  # keys of different rows never interleave
    start_keys = rows * stride + starts
    end_keys = rows * stride + ends
    above = (rows - 1) * stride
    # run j in the row above touches run i iff start_j <= end_i and end_j >= start_i (ends exclusive)
    lo = np.searchsorted(end_keys, above + starts, side="left")
    hi = np.searchsorted(start_keys, above + ends, side="right")
    counts = np.maximum(hi - lo, 0)
    below_idx = np.repeat(np.arange(n), counts)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    above_idx = np.repeat(lo, counts) + (np.arange(counts.sum()) - offsets)
    roots = _root_labels(n, below_idx, above_idx)
    _, label = np.unique(roots, return_inverse=True)
    k = int(label.max()) + 1
    area = np.bincount(label, weights=ends - starts, minlength=k).astype(np.int64)
    x1 = np.full(k, fg.shape[1]); np.minimum.at(x1, label, starts)
    x2 = np.zeros(k, dtype=np.int64); np.maximum.at(x2, label, ends)
    y1 = np.full(k, fg.shape[0]); np.minimum.at(y1, label, rows)
    y2 = np.zeros(k, dtype=np.int64); np.maximum.at(y2, label, rows + 1)
    return [Component(int(area[i]), (int(x1[i]), int(y1[i]), int(x2[i]), int(y2[i]))) for i in range(k)]


def largest_component(fg: np.ndarray) -> Component | None:
    """The component with the most pixels (the first in raster order on ties), or None for an empty mask."""
    parts = connected_components(fg)
    return max(parts, key=lambda c: c.area) if parts else None


class MaskError(DataError):
    """A mask that yields no box (unreadable, wrong size, empty); the message is the reason."""


def box_from_mask_file(path: str | os.PathLike, size: tuple[int, int], components: str = "all",
                       threshold: float | None = None) -> tuple[Box, int]:
    """``(box, number of components)`` of a mask file that must be ``size`` = (width, height); else MaskError."""
    try:
        values, is_jpeg = read_mask_values(path)
    except Exception as err:
        raise MaskError(f"unreadable mask: {err}") from err
    if values.shape != (size[1], size[0]):
        raise MaskError(f"mask is {values.shape[1]}x{values.shape[0]} but the image is {size[0]}x{size[1]}")
    t = default_threshold(is_jpeg) if threshold is None else threshold
    box, count = mask_box(values > t, components)
    if box is None:
        raise MaskError(f"empty mask: no pixel above {t:g} (max value {values.max():g})")
    return box, count


def mask_box(fg: np.ndarray, components: str = "all") -> tuple[Box | None, int]:
    """``(box, number of components)``; ``components`` is ``all`` (box of all foreground) or ``largest``."""
    if components not in ("all", "largest"):
        raise ConfigError(f"components must be 'all' or 'largest', got {components!r}")
    parts = connected_components(fg)
    if not parts:
        return None, 0
    if components == "largest":
        return max(parts, key=lambda c: c.area).box, len(parts)
    return tight_box(fg), len(parts)


def image_and_mask_box(image: str, mask: str, components: str = "all",
                       threshold: float | None = None) -> tuple[tuple[int, int], Box, int] | Skip:
    """``((width, height), box, number of components)`` of an image and its mask, or the :class:`Skip` that
    says which of the two could not be used and why (the mask -> box step every mask converter shares)."""
    try:
        size = image_size(image)
    except Exception as err:  # PIL raises several types for unreadable files
        return Skip(image, f"unreadable image: {err}")
    try:
        box, count = box_from_mask_file(mask, size, components, threshold)
    except MaskError as err:
        return Skip(mask, str(err))
    return size, box, count
