"""Helpers shared by the Qwen policy tests: small records and a logit-bias hook."""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import numpy as np
import torch
from PIL import Image

SHORT_CONTEXT = 100
"""Context of the short tiny model: a 64 px prompt (65 tokens) + 16 new tokens fits, a 224 px one (125) not."""


def make_record(index: int, width: int, height: int, *, seed: int = 0, query: str = "lesion") -> dict:
    """A record with a noise image and a box inside it."""
    rng = np.random.default_rng(seed * 1000 + index)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    x1, y1 = width // 5, height // 4
    return {"id": f"rec-{index}", "image": Image.fromarray(pixels, "RGB"), "query": query,
            "bbox": [float(x1), float(y1), float(width - x1), float(height - y1)],
            "width": width, "height": height}


def make_records(*sizes: tuple[int, int], seed: int = 0) -> list[dict]:
    """One record per (width, height)."""
    return [make_record(i, w, h, seed=seed) for i, (w, h) in enumerate(sizes)]


@contextlib.contextmanager
def logit_bias(model: torch.nn.Module, bias: Mapping[int, float]) -> Iterator[None]:
    """Add ``bias[token]`` to the model's output logits (generation and scoring alike)."""
    head = model.get_output_embeddings()
    ids = torch.tensor(list(bias))
    values = torch.tensor(list(bias.values()))

    def hook(_module, _inputs, output):
        output = output.clone()
        output[..., ids] += values.to(output.dtype)
        return output

    handle = head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
