"""`SampleLoggingCallback`: TensorBoard samples of what the policy answers.

Each sample shows the image with the GT (green) and predicted (red) boxes, the query, the completion, and
the IoU, reward and τ. The module hands the samples over in its step outputs under ``"samples"``: a dict
with ``records`` (the batch's records), ``texts`` (one completion per record), ``boxes`` ([B, 4], original
pixels), ``ious`` ([B]) and optionally ``rewards`` ([B]) and ``tau``. Rank zero only; a no-op without a
TensorBoard logger.
"""
from __future__ import annotations

from typing import Any, Mapping

import lightning.pytorch as pl
import numpy as np

from medloc_lightning.errors import ConfigError
from medloc_lightning.plotting import GT_COLOUR, PRED_COLOUR, draw_boxes


def _tensorboard(trainer: pl.Trainer) -> Any | None:
    if trainer.global_rank != 0:
        return None
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_image") and hasattr(experiment, "add_text"):
            return experiment
    return None


class SampleLoggingCallback(pl.Callback):
    """Log ``num_samples`` training samples every ``every_n_steps`` optimizer steps, and the first validation
    batch's samples at each validation."""

    def __init__(self, every_n_steps: int = 50, num_samples: int = 2) -> None:
        super().__init__()
        if every_n_steps < 1 or num_samples < 1:
            raise ConfigError(f"every_n_steps and num_samples must be >= 1, got {every_n_steps}, {num_samples}")
        self.every_n_steps, self.num_samples = int(every_n_steps), int(num_samples)
        self._step_at_start = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # A batch may take several optimizer steps (num_iterations): log if any of them is on the interval.
        first, last = self._step_at_start, max(self._step_at_start, trainer.global_step - 1)
        if first % self.every_n_steps == 0 or first // self.every_n_steps != last // self.every_n_steps:
            self._log(trainer, "train", outputs, first)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            self._log(trainer, "val", outputs, trainer.global_step)

    def _log(self, trainer: pl.Trainer, stage: str, outputs: Any, step: int) -> None:
        samples = outputs.get("samples") if isinstance(outputs, Mapping) else None
        writer = _tensorboard(trainer) if samples else None
        if writer is None:
            return
        records, texts, boxes, ious = samples["records"], samples["texts"], samples["boxes"], samples["ious"]
        rewards, tau = samples.get("rewards"), samples.get("tau")
        for i in range(min(self.num_samples, len(records), len(texts))):
            record, box = records[i], [float(v) for v in boxes[i].tolist()]
            image = draw_boxes(record["image"], [(record["bbox"], GT_COLOUR, "GT"), (box, PRED_COLOUR, "pred")])
            writer.add_image(f"{stage}_samples/{i}", np.asarray(image), step, dataformats="HWC")
            facts = [f"IoU {float(ious[i]):.3f}"]
            if rewards is not None:
                facts.append(f"reward {float(rewards[i]):.3f}")
            if tau is not None:
                facts.append(f"τ {tau:.3f}")
            md = (f"**{record.get('id')}** — {', '.join(facts)}\n\n**query:** {record.get('query')}\n\n"
                  f"**GT box:** {list(record['bbox'])}\n\n**completion:**\n\n```\n{texts[i]}\n```")
            writer.add_text(f"{stage}_samples/{i}", md, step)
