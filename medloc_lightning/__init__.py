"""medloc-lightning: MedLoc-R1 (performance-aware IoU-threshold curriculum for GRPO grounding) in Lightning.

The core (``boxes``, ``parsing``, ``rewards``, ``curriculum``, ``grpo``, ``metrics``) imports no Lightning;
Lightning-facing names are loaded lazily so ``import medloc_lightning.curriculum`` stays cheap.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

from medloc_lightning._moved import MovedFinder

__version__ = "0.1.0"

if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, MovedFinder())  # old module paths (no file has them any more), for one release

_LAZY = {
    "ThresholdCurriculumCallback": "medloc_lightning.callbacks",
    "GroundingMetrics": "medloc_lightning.metrics",
    "ThresholdCurriculum": "medloc_lightning.curriculum",
    "GroundingReward": "medloc_lightning.rewards",
    "box_iou": "medloc_lightning.boxes",
    "parse_box": "medloc_lightning.parsing",
    "GRPOGroundingModule": "medloc_lightning.module",
    "SFTGroundingModule": "medloc_lightning.module",
    "GroundingDataModule": "medloc_lightning.data",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medloc_lightning' has no attribute {name!r}")
