"""Mask -> box maths: tight boxes, 8-connected components (checked against a flood fill), mask reading."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from datatest_helpers import make_mask
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp
from PIL import Image

from medloc_lightning.data.converters.maskops import (Component, MaskError, box_from_mask_file, connected_components,
                                                      largest_component, mask_box, read_mask, tight_box)


def flood_fill_components(fg: np.ndarray) -> list[Component]:
    """Reference: breadth-first search over 8 neighbours, components in raster order of their first pixel."""
    h, w = fg.shape
    seen = np.zeros_like(fg, dtype=bool)
    out = []
    for y in range(h):
        for x in range(w):
            if not fg[y, x] or seen[y, x]:
                continue
            queue, pixels = deque([(y, x)]), []
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                pixels.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            ys, xs = zip(*pixels)
            out.append(Component(len(pixels), (min(xs), min(ys), max(xs) + 1, max(ys) + 1)))
    return out


def blobs(shape, rects):
    fg = np.zeros(shape, dtype=bool)
    for x1, y1, x2, y2 in rects:
        fg[y1:y2, x1:x2] = True
    return fg


def test_tight_box_is_min_col_to_max_col_plus_one():
    fg = blobs((20, 30), [(4, 3, 9, 7)])
    assert tight_box(fg) == (4, 3, 9, 7)
    assert tight_box(np.zeros((5, 5), bool)) is None


def test_three_blobs_give_three_components_with_exact_boxes():
    fg = blobs((40, 50), [(2, 2, 6, 5), (20, 10, 40, 30), (45, 35, 48, 39)])
    assert connected_components(fg) == [Component(12, (2, 2, 6, 5)), Component(400, (20, 10, 40, 30)),
                                        Component(12, (45, 35, 48, 39))]
    assert largest_component(fg).box == (20, 10, 40, 30)
    assert mask_box(fg, "largest") == ((20, 10, 40, 30), 3)
    assert mask_box(fg, "all") == ((2, 2, 48, 39), 3)


def test_diagonal_touch_connects_but_a_gap_does_not():
    diagonal = blobs((10, 10), [(0, 0, 3, 3), (3, 3, 6, 6)])
    assert len(connected_components(diagonal)) == 1
    gap = blobs((10, 10), [(0, 0, 3, 3), (4, 0, 6, 3)])
    assert len(connected_components(gap)) == 2


def test_u_shape_merges_runs_that_meet_only_lower_down():
    fg = blobs((10, 10), [(0, 0, 2, 8), (6, 0, 8, 8), (0, 8, 8, 10)])
    assert connected_components(fg) == [Component(2 * 16 + 16, (0, 0, 8, 10))]


def test_ties_keep_the_first_component_in_raster_order():
    fg = blobs((10, 10), [(6, 0, 8, 2), (0, 5, 2, 7)])
    assert largest_component(fg).box == (6, 0, 8, 2)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(bool, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=14)))
def test_components_match_a_flood_fill(fg):
    found = connected_components(fg)
    assert found == flood_fill_components(fg)
    assert sum(c.area for c in found) == int(fg.sum())


def test_mask_box_rejects_unknown_mode():
    with pytest.raises(ValueError):
        mask_box(np.ones((2, 2), bool), "biggest")


def test_jpeg_masks_use_a_midpoint_threshold(tmp_path):
    rect = (5, 7, 27, 19)  # edges off the 8x8 JPEG block grid, so compression rings around them
    path = make_mask(tmp_path / "m.jpg", (40, 30), [rect], quality=60)
    assert tight_box(read_mask(path)) == rect
    assert tight_box(read_mask(path, threshold=0)) != rect  # "nonzero" would inflate the box


@pytest.mark.parametrize("mode", ["1", "P", "RGB", "RGBA", "I;16"])
def test_mask_modes(tmp_path, mode):
    a = np.zeros((12, 16), dtype=np.uint8)
    a[2:5, 3:9] = 255
    im = Image.fromarray(a)
    im = Image.fromarray(a.astype(np.uint16) * 200) if mode == "I;16" else im.convert(mode)
    im.save(tmp_path / "m.png")
    assert tight_box(read_mask(tmp_path / "m.png")) == (3, 2, 9, 5)


def test_box_from_mask_file_errors_name_the_reason(tmp_path):
    make_mask(tmp_path / "empty.png", (10, 8))
    with pytest.raises(MaskError, match=r"empty mask: no pixel above 0 \(max value 0\)"):
        box_from_mask_file(tmp_path / "empty.png", (10, 8))
    make_mask(tmp_path / "m.png", (10, 8), [(1, 1, 3, 3)])
    with pytest.raises(MaskError, match="mask is 10x8 but the image is 12x8"):
        box_from_mask_file(tmp_path / "m.png", (12, 8))
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(MaskError, match="unreadable mask"):
        box_from_mask_file(tmp_path / "bad.png", (10, 8))
    assert box_from_mask_file(tmp_path / "m.png", (10, 8)) == ((1, 1, 3, 3), 1)
