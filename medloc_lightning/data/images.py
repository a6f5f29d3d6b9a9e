"""Image I/O for grounding records: cheap header reads, decode checks that catch corrupt files, RGB loading."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_image_file(name: str | os.PathLike) -> bool:
    """Whether the file name carries one of the image extensions the converters scan for."""
    return os.fspath(name).lower().endswith(IMAGE_EXTENSIONS)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file header only; no pixel data is decoded."""
    with Image.open(path) as im:
        return im.size


def verify_image(path: str | os.PathLike) -> tuple[int, int]:
    """Decode the whole file and return its header ``(width, height)``; raises ``OSError`` if it is corrupt.

    A header read alone misses truncated files, so the pixel stream is decoded. JPEGs decode in
    libjpeg's reduced-size draft mode, which still reads every entropy-coded byte (so truncation is
    caught) but skips most of the inverse DCT work.
    """
    with Image.open(path) as im:
        size = im.size
        if im.format == "JPEG":
            im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return size


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit and float images are min-max scaled, not clipped."""
    if im.mode in _HIGH_DEPTH_MODES:
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(np.round(scaled).astype(np.uint8))
    return im if im.mode == "RGB" else im.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Fully decode an image into memory as RGB; the file is closed on return (safe to pickle/fork)."""
    with Image.open(path) as im:
        im.load()
        rgb = to_rgb(im)
        # close() invalidates the original image object, so an RGB file must be copied out first
        return rgb.copy() if rgb is im else rgb
