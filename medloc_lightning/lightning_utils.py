"""Small helpers shared by the Lightning adapters."""
from __future__ import annotations

import math

import lightning.pytorch as pl


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes this training step's logs: its own every-n-steps rule, plus the last batch of an
    epoch and the last step, whose values it flushes at the end."""
    # Lightning has no public "will the logger write this step" flag, and recomputing its rule would need its
    # private batch counter too; read the connector's flag, and log every step if it ever goes away.
    connector = getattr(trainer, "_logger_connector", None)
    last_step = 0 < trainer.max_steps <= trainer.global_step
    return bool(getattr(connector, "should_update_logs", True) or trainer.is_last_batch or last_step)


def total_optimizer_steps(trainer: pl.Trainer, steps_per_batch: int = 1) -> float:
    """The optimizer steps this fit will take (inf when unbounded): learning-rate schedules and progress-driven
    τ schedules both span it. ``steps_per_batch`` counts a module that steps its optimizer several times per
    batch (GRPO's μ), which Lightning's ``estimated_stepping_batches`` does not know about."""
    estimate = trainer.estimated_stepping_batches  # also sets up the train dataloader when needed
    max_steps = math.inf if trainer.max_steps == -1 else trainer.max_steps
    batches = trainer.num_training_batches
    if steps_per_batch == 1 or trainer.max_epochs == -1 or math.isinf(batches):
        return float(estimate if steps_per_batch == 1 else max_steps)
    by_epochs = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1) * steps_per_batch
    return float(min(by_epochs, max_steps))
