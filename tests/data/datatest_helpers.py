"""Small builders for fake dataset trees (images, masks, JSONL) shared by the data tests."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image


def make_image(path: str | os.PathLike, size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> Path:
    """A noise image of ``size`` = (width, height) saved in the format of the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "RGB":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    elif mode == "L":
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    elif mode == "I;16":
        im = Image.fromarray(rng.integers(0, 4096, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    im.save(path)
    return path


def make_mask(path: str | os.PathLike, size: tuple[int, int], rects: Sequence[tuple[int, int, int, int]] = (),
              value: int = 255, quality: int = 90) -> Path:
    """A grey mask with filled rectangles given as (x1, y1, x2, y2), x2/y2 exclusive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0]), dtype=np.uint8)
    for x1, y1, x2, y2 in rects:
        a[y1:y2, x1:x2] = value
    im = Image.fromarray(a)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=quality)
    else:
        im.save(path)
    return path


def write_jsonl(path: str | os.PathLike, lines: Iterable[Any]) -> Path:
    """Write dicts as JSON lines; strings are written verbatim (for broken lines)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def record(rid: str, image: str, bbox: Sequence[float] = (2, 3, 20, 25), size: tuple[int, int] = (40, 30),
           **extra: Any) -> dict[str, Any]:
    """A schema record."""
    return {"id": rid, "image": image, "query": f"the thing {rid}", "bbox": list(bbox), "width": size[0],
            "height": size[1], **extra}


def snapshot(root: str | os.PathLike) -> dict[str, tuple[int, str]]:
    """``relative path -> (mtime_ns, sha256)`` of every file under ``root``: proves a converter left it alone."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = (os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out
