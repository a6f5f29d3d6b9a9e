"""`CheckpointingTrainer`: Lightning's Trainer reading every checkpoint with ``weights_only=True`` (after
checking it) and writing it atomically; `medloc`'s Trainer is one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from medloc_lightning.checkpointing.loading import verify_checkpoint
from medloc_lightning.checkpointing.plugin import AtomicCheckpointIO

_CKPT_KEYWORDS = ("last", "best", "hpc")


def checked_ckpt_path(ckpt_path: str | os.PathLike | None) -> str | None:
    """A local path to ``ckpt_path`` once it has passed the weights_only check (Lightning's keywords pass as is:
    they name this run's own checkpoints, which `AtomicCheckpointIO` reads with weights_only=True)."""
    if ckpt_path is None or str(ckpt_path) in _CKPT_KEYWORDS or str(ckpt_path).startswith("registry"):
        return None if ckpt_path is None else str(ckpt_path)
    return verify_checkpoint(ckpt_path)


class CheckpointingTrainer(pl.Trainer):
    """Lightning's Trainer with medloc's checkpoint handling.

    Every ``ckpt_path`` (a file or an http(s) URL) is read with ``weights_only=True`` only, and checkpoints are
    written atomically (`AtomicCheckpointIO`, unless another checkpoint plugin was configured).
    """

    def _secure_checkpoint_io(self) -> None:
        if type(self.strategy.checkpoint_io) is TorchCheckpointIO:
            self.strategy.checkpoint_io = AtomicCheckpointIO()

    def fit(self, model: pl.LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: pl.LightningDataModule | None = None, ckpt_path: str | Path | None = None) -> None:
        """Lightning's ``fit``; ``ckpt_path`` may be a local file or an http(s) URL."""
        self._secure_checkpoint_io()
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, checked_ckpt_path(ckpt_path), weights_only=True)

    def validate(self, model: pl.LightningModule | None = None, dataloaders: Any = None,
                 ckpt_path: str | Path | None = None, verbose: bool = True,
                 datamodule: pl.LightningDataModule | None = None) -> Any:
        """Lightning's ``validate``; ``ckpt_path`` may be a local file or an http(s) URL."""
        self._secure_checkpoint_io()
        return super().validate(model, dataloaders, checked_ckpt_path(ckpt_path), verbose, datamodule, weights_only=True)

    def test(self, model: pl.LightningModule | None = None, dataloaders: Any = None,
             ckpt_path: str | Path | None = None, verbose: bool = True,
             datamodule: pl.LightningDataModule | None = None) -> Any:
        """Lightning's ``test``; ``ckpt_path`` may be a local file or an http(s) URL."""
        self._secure_checkpoint_io()
        return super().test(model, dataloaders, checked_ckpt_path(ckpt_path), verbose, datamodule, weights_only=True)

    def predict(self, model: pl.LightningModule | None = None, dataloaders: Any = None,
                datamodule: pl.LightningDataModule | None = None, return_predictions: bool | None = None,
                ckpt_path: str | Path | None = None) -> Any:
        """Lightning's ``predict``; ``ckpt_path`` may be a local file or an http(s) URL."""
        self._secure_checkpoint_io()
        return super().predict(model, dataloaders, datamodule, return_predictions, checked_ckpt_path(ckpt_path),
                               weights_only=True)
