"""The curriculum lab: the paper's methods, as the shipped configs define them (`methods`), trained on the fast
BoxPolicy from random weights or from a grounding prior (`runs`), and reported against the image-blind baseline
(`report`). `qwen_prior` is the recipe of the shipped tiny Qwen2.5-VL prior. ``python -m medloc_lightning.lab``
runs the lab's quickstart, one method, or a prior from an installed package (``--help``).

The names below load on first use, so the command line starts without importing Lightning.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(("CONFIGS", "RECIPE", "SAME_AS_RECIPE", "Method", "configs_folder", "load_method", "method_names"),
                    "medloc_lightning.lab.methods"),
    **dict.fromkeys(("REGIMES", "EarlyGroups", "LabResult", "Prior", "Regime", "build_prior", "lab_data", "run"),
                    "medloc_lightning.lab.runs"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medloc_lightning.lab' has no attribute {name!r}")
