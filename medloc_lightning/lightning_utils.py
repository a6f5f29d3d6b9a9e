"""Two facts about a fit that Lightning does not expose and that both the GRPO module and the curriculum callback
need: whether the logger writes this training step, and how many optimizer steps the fit takes."""
from __future__ import annotations

import math

import lightning.pytorch as pl


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning's logger writes the training step in progress: every ``log_every_n_steps`` batches that
    step the optimizer, plus the last batch of an epoch and the last step, whose values it flushes at the end.
    Logging costs about 0.3 ms per value, so the full set is built only for the steps that are written."""
    every = trainer.log_every_n_steps
    if every <= 0:
        return False
    stepped = trainer.fit_loop.epoch_loop.batch_progress.total.ready // max(trainer.accumulate_grad_batches, 1)
    return stepped % every == 0 or trainer.is_last_batch or 0 < trainer.max_steps <= trainer.global_step


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
