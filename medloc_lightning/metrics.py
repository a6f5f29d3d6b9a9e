"""Grounding metrics: Acc@0.5, Acc@0.75, pseudo-mAP (mean Acc over IoU 0.50:0.05:0.95), mIoU, parse rate.

Accuracy at t counts ``IoU >= t`` (the package-wide convention; VLM-R1's eval uses ``> 0.5``). A NaN
row in ``preds`` means "no box parsed" and counts as IoU 0. States are a few sums reduced with
``"sum"``, so memory is constant and DDP sync is one small all-reduce. Plain torch (no torchvision).
"""
from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from medloc_lightning.boxes import box_iou
from medloc_lightning.errors import ConfigError

__all__ = ["GroundingMetrics", "PSEUDO_MAP_THRESHOLDS"]

PSEUDO_MAP_THRESHOLDS: tuple[float, ...] = tuple(float(Decimal("0.50") + Decimal("0.05") * k) for k in range(10))
"""0.50, 0.55, ..., 0.95: each the float nearest its decimal value (no accumulated range error)."""


def _key(threshold: float) -> str:
    return f"acc@{threshold:g}"


class GroundingMetrics(Metric):
    """Single-box grounding accuracy over a stream of ``update(preds[N, 4], target[N, 4])`` calls.

    ``compute()`` returns ``acc@0.5``, ``acc@0.75``, ``pseudo_map``, ``miou``, ``parse_rate`` and an
    ``acc@t`` for each extra ``thresholds`` entry (e.g. ``thresholds=(0.3,)`` adds ``acc@0.3``). Boxes
    are xyxy in one pixel space (original pixels in this package). IoU is computed in the inputs' dtype;
    pass float64 if IoUs that fall exactly on a threshold must compare exactly. With no rows seen,
    ``compute()`` returns zeros (and torchmetrics warns when ``update`` was never called).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    sums: Tensor

    def __init__(self, thresholds: Sequence[float] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        extra = tuple(thresholds)
        for t in extra:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
                raise ConfigError(f"thresholds must be numbers in [0, 1], got {t!r}")
        self.reported: tuple[float, ...] = tuple(sorted({0.5, 0.75, *(float(t) for t in extra)}))
        # Column 0 is threshold 0.0: IoUs are never NaN and never below 0, so it counts the rows seen.
        self.thresholds: tuple[float, ...] = (0.0, *sorted({*PSEUDO_MAP_THRESHOLDS, *self.reported} - {0.0}))
        self._threshold_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        # sums = [rows, hits at each threshold > 0 ..., sum of IoU, rows without a box]
        self.add_state("sums", torch.zeros(len(self.thresholds) + 2, dtype=torch.float64), dist_reduce_fx="sum")

    def _threshold_tensor(self, like: Tensor) -> Tensor:
        """The thresholds in ``like``'s dtype, so an IoU equal to a threshold in that dtype counts as a hit."""
        key = (like.dtype, like.device)
        if key not in self._threshold_cache:
            self._threshold_cache[key] = torch.tensor(self.thresholds, dtype=like.dtype, device=like.device)
        return self._threshold_cache[key]

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add N predictions (NaN row = no box parsed) and their N ground-truth boxes."""
        if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
            raise ValueError(f"preds and target must be tensors, got {type(preds).__name__}, {type(target).__name__}")
        if preds.ndim != 2 or preds.shape[-1] != 4 or preds.shape != target.shape:
            raise ValueError(
                f"preds and target must both have shape [N, 4], got {tuple(preds.shape)} and {tuple(target.shape)}"
            )
        if not math.isfinite(target.sum()):
            raise ValueError("target boxes must be finite (a NaN/inf ground-truth box is a data error)")
        ious = box_iou(preds, target)
        if ious.dtype not in (torch.float32, torch.float64):  # half precision: compare in float32
            ious = ious.float()
        ious = ious.unsqueeze(1)  # [N, 1]
        per_row = torch.cat((ious >= self._threshold_tensor(ious), ious, preds.isnan().any(1, keepdim=True)), dim=1)
        self.sums.add_(per_row.sum(0))  # in place: no nn.Module.__setattr__ on the hot path

    def compute(self) -> dict[str, Tensor]:
        """The metrics as 0-dim float64 tensors (fractions in [0, 1])."""
        rows = self.sums[0]
        count = rows.clamp(min=1)  # 0 rows -> every sum is 0 -> zeros, not NaN
        accuracy = self.sums[: len(self.thresholds)] / count
        by_threshold = dict(zip(self.thresholds, accuracy))
        out = {_key(t): by_threshold[t] for t in self.reported}
        out["pseudo_map"] = torch.stack([by_threshold[t] for t in PSEUDO_MAP_THRESHOLDS]).mean()
        out["miou"] = self.sums[-2] / count
        out["parse_rate"] = (rows - self.sums[-1]) / count
        return out
