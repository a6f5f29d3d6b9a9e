"""`StepProgressBar`: training progress as optimizer steps out of ``max_steps``, with τ and the reward.

GRPO runs are budgeted in optimizer steps across many epochs, so Lightning's per-epoch bar ("Epoch 12/-2") says
little; this bar counts ``trainer.global_step`` against ``max_steps`` and shows the progress-bar metrics under
their short names (``tau``, ``reward``) without the logger's version number. `medloc` uses it unless the config
names a progress bar of its own.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """A TQDM bar over optimizer steps (``global_step`` of ``max_steps``) for the whole run, not per epoch.

    Without ``max_steps`` (-1) it falls back to Lightning's bar over each epoch's batches.
    """

    @staticmethod
    def _counts_steps(trainer: pl.Trainer) -> bool:
        return trainer.max_steps > 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._counts_steps(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step  # a resumed run starts where it stopped
            bar.set_description("train")

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._counts_steps(trainer):
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._counts_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step = self.train_progress_bar, trainer.global_step
        # a GRPO batch may take several optimizer steps (num_iterations), so compare distances, not residues
        if self.is_enabled and (step - bar.n >= self.refresh_rate or step >= bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._counts_steps(trainer):
            return super().on_train_epoch_end(trainer, pl_module)
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The progress-bar metrics by the last part of their name (``curriculum/tau`` -> ``tau``), no ``v_num``."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if "train/reward" in trainer.callback_metrics:  # the GRPO module's mean reward
            items["train/reward"] = f"{float(trainer.callback_metrics['train/reward']):.3g}"
        short = Counter(key.rsplit("/", 1)[-1] for key in items)
        return {(key.rsplit("/", 1)[-1] if short[key.rsplit("/", 1)[-1]] == 1 else key): value
                for key, value in items.items()}


def use_step_progress_bar(trainer: pl.Trainer, configured: Sequence[Callback] = ()) -> None:
    """Swap the progress bar Lightning added by default for a `StepProgressBar`; a bar in ``configured`` (the
    callbacks the user asked for) is kept, and so is a disabled bar."""
    if any(isinstance(cb, ProgressBar) for cb in configured):
        return
    trainer.callbacks = [StepProgressBar() if isinstance(cb, ProgressBar) else cb for cb in trainer.callbacks]
