"""Small helpers shared by the Lightning adapters."""
from __future__ import annotations

import lightning.pytorch as pl


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes this training step's logs: its own every-n-steps rule, plus the last batch of an
    epoch and the last step, whose values it flushes at the end."""
    # Lightning has no public "will the logger write this step" flag, and recomputing its rule would need its
    # private batch counter too; read the connector's flag, and log every step if it ever goes away.
    connector = getattr(trainer, "_logger_connector", None)
    last_step = 0 < trainer.max_steps <= trainer.global_step
    return bool(getattr(connector, "should_update_logs", True) or trainer.is_last_batch or last_step)
