"""TensorBoard samples: the query, the completion, the image with GT (green) and predicted (red) boxes,
and the IoU, reward and τ. Rank zero only; a no-op without a TensorBoard logger."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from torch import Tensor

from medloc_lightning.plotting import GT_COLOUR, PRED_COLOUR, draw_boxes


def _tensorboard(module: Any) -> Any | None:
    if module._trainer is None or module.trainer.global_rank != 0:
        return None
    for logger in module.trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_image") and hasattr(experiment, "add_text"):
            return experiment
    return None


def log_samples(
    module: Any,
    stage: str,
    records: Sequence[dict],
    texts: Sequence[str],
    boxes: Tensor,
    ious: Tensor,
    rewards: Tensor | None,
    tau: float | None = None,
) -> None:
    """Log the first ``module.num_log_samples`` records (one completion each) at the current global step."""
    writer = _tensorboard(module)
    if writer is None:
        return
    step = module.global_step
    for i in range(min(module.num_log_samples, len(records), len(texts))):
        record, box = records[i], [float(v) for v in boxes[i].tolist()]
        image = draw_boxes(record["image"], [(record["bbox"], GT_COLOUR, "GT"), (box, PRED_COLOUR, "pred")])
        writer.add_image(f"{stage}_samples/{i}", np.asarray(image), step, dataformats="HWC")
        facts = [f"IoU {float(ious[i]):.3f}"]
        if rewards is not None:
            facts.append(f"reward {float(rewards[i]):.3f}")
        if tau is not None:
            facts.append(f"τ {tau:.3f}")
        md = (
            f"**{record.get('id')}** — {', '.join(facts)}\n\n**query:** {record.get('query')}\n\n"
            f"**GT box:** {list(record['bbox'])}\n\n**completion:**\n\n```\n{texts[i]}\n```"
        )
        writer.add_text(f"{stage}_samples/{i}", md, step)
