"""Model folders shipped inside the package, by the ``medloc:`` names configs use.

``medloc:tiny-qwen2.5-vl-grounding`` is a 0.7 M-parameter Qwen2.5-VL (the real architecture, a tokenizer
trained offline) pretrained by SFT on large, high-contrast synthetic structures: a grounding prior for
CPU runs of the full GRPO path. `medloc_lightning.prior` rebuilds it; its recipe and scores are in the
folder's ``medloc_prior.json``. Each folder loads with the stock ``from_pretrained``.
"""
from __future__ import annotations

from pathlib import Path

SHIPPED: dict[str, str] = {"medloc:tiny-qwen2.5-vl-grounding": "tiny-qwen2.5-vl-grounding"}
"""``medloc:`` name -> folder below this package."""


def shipped_path(name: str) -> Path:
    """The folder of a shipped checkpoint; ``KeyError`` for other names."""
    return Path(__file__).parent / SHIPPED[name]
