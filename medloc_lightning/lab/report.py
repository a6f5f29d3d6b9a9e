"""How well a policy grounds, beside the image-blind baseline: the yardstick of the lab's and the Qwen prior's
reports.

`grounding_report` gives greedy Acc@τ, mIoU and parse rate, the correlation of predicted and true box centres, and
the same metrics for the baseline that always answers the median training box.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch


def centre_correlation(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Pearson correlation of predicted and true box centres in x and in y, over rows with a parsed box."""
    ok = ~torch.isnan(pred).any(1)
    if int(ok.sum()) < 3:
        return math.nan, math.nan
    p, t = pred[ok].double(), target[ok].double()
    out = []
    for lo, hi in ((0, 2), (1, 3)):
        a, b = ((p[:, lo] + p[:, hi]) / 2).numpy(), ((t[:, lo] + t[:, hi]) / 2).numpy()
        out.append(float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan)
    return out[0], out[1]


def _metrics(pred: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float]) -> dict[str, float]:
    from medloc_lightning.metrics import GroundingMetrics

    metric = GroundingMetrics(thresholds=thresholds)
    metric.update(pred.double(), target.double())
    out = {k: float(v) for k, v in metric.compute().items()}
    out["centre_corr_x"], out["centre_corr_y"] = centre_correlation(pred, target)
    return out


def grounding_report(policy: Any, records: Sequence[dict], train_gt: torch.Tensor, batch_size: int = 32,
                     thresholds: Sequence[float] = (0.3,)) -> dict[str, dict[str, float]]:
    """Greedy metrics of ``policy`` on ``records`` beside those of always answering the median of
    ``train_gt`` ([N, 4] training boxes: the baseline that ignores the image)."""
    from medloc_lightning.data.records import gt_boxes

    target = gt_boxes(records)
    preds = []
    was_training = policy.training
    policy.eval()
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            preds.append(policy.predict(records[start:start + batch_size])[1].cpu().float())
    policy.train(was_training)
    median = train_gt.float().median(0).values.expand_as(target).clone()
    return {"policy": _metrics(torch.cat(preds), target, thresholds),
            "median_box": _metrics(median, target, thresholds), "rows": {"n": float(len(records))}}


def load_split(data: Any, split: str, limit: int | None = None) -> list[dict]:
    """The records of one split of a DataModule (images decoded), in file order: all of them, or the first
    ``limit`` (only those are decoded)."""
    data.prepare_data()
    data.setup("test" if split == "test" else ("validate" if split == "val" else "fit"))
    dataset = data.datasets[split]
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return [dataset[i] for i in range(count)]


def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (``null`` in JSON), in nested dicts and lists:
    a correlation undefined on constant boxes, for instance, is written as ``null`` rather than as ``NaN``,
    which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def train_boxes(data: Any) -> torch.Tensor:
    """[N, 4] ground-truth boxes of a DataModule's training split (for the median-box baseline)."""
    data.prepare_data()
    data.setup("fit")
    table = data.datasets["train"].table
    return torch.tensor(table["bbox"], dtype=torch.float32).reshape(-1, 4)
