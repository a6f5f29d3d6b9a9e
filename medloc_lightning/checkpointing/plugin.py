"""`AtomicCheckpointIO`: Lightning's checkpoint plugin with atomic local writes and ``weights_only=True`` reads.

A checkpoint is written to a hidden temporary file in its target folder, flushed to disk, then renamed over
the target, so a run killed at any moment (even by SIGKILL mid-save) leaves the previous file whole.
`medloc` (``medloc_lightning.cli.Trainer``) uses it unless another checkpoint plugin is configured.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH

from medloc_lightning.checkpointing.atomic import atomic_open, remove_stale_temporaries
from medloc_lightning.checkpointing.loading import UnsafeCheckpointError, is_url, load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with an atomic local save and a ``weights_only=True`` load.

    Save: ``torch.save`` into a hidden temporary file beside the target, flush it to disk, then
    ``os.replace`` it over the target, so a reader (or a run killed at any moment) sees the old file or
    the new one, never half of one. The file gets the mode Lightning's own writer gives (``0o666`` less the
    umask), and a save first deletes the temporary files a killed save of the same target left behind.
    Remote paths keep Lightning's writer.
    Load: always ``weights_only=True`` (see :func:`load_checkpoint`), whatever the caller asks.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = os.path.abspath(os.fspath(path))
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        remove_stale_temporaries(target)  # a killed save's leftovers go at the next save
        with atomic_open(target, "wb", fsync=True) as f:
            torch.save(checkpoint, f)
        _fsync_folder(folder)

    def load_checkpoint(self, path: _PATH, map_location: Callable | Any = "cpu",
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise UnsafeCheckpointError(f"{path}: medloc loads checkpoints with weights_only=True only")
        if not is_url(os.fspath(path)) and not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(path, map_location=map_location)


def _is_local(path: _PATH) -> bool:
    return type(get_filesystem(path)).__name__ == "LocalFileSystem"


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
