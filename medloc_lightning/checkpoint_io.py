"""`AtomicCheckpointIO`: Lightning's checkpoint plugin with atomic local writes and ``weights_only=True`` reads.

A checkpoint is written to a hidden temporary file in its target folder, flushed to disk, then renamed over
the target, so a run killed at any moment (even by SIGKILL mid-save) leaves the previous file whole.
`medloc` (``medloc_lightning.cli.Trainer``) uses it unless another checkpoint plugin is configured.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH

from medloc_lightning.checkpoints import UnsafeCheckpointError, is_url, load_checkpoint


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
        _remove_stale_temporaries(target)
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(target), suffix=_TEMP_SUFFIX)
        try:
            _set_mode(handle, tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual 0644 (umask 022)
            with os.fdopen(handle, "wb") as f:
                handle = -1  # closed with f from here on
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if handle >= 0:
                os.close(handle)
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        _fsync_folder(folder)

    def load_checkpoint(self, path: _PATH, map_location: Callable | Any = "cpu",
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise UnsafeCheckpointError(f"{path}: medloc loads checkpoints with weights_only=True only")
        if not is_url(os.fspath(path)) and not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(path, map_location=map_location)


_TEMP_SUFFIX = ".tmp"


def _temp_prefix(target: str) -> str:
    return f".{os.path.basename(target)}."


def _temp_pattern(target: str) -> re.Pattern[str]:
    """The names ``tempfile.mkstemp`` gives this writer's temporary files for ``target`` (8 random characters)."""
    return re.compile(re.escape(_temp_prefix(target)) + r"[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX))


def _remove_stale_temporaries(target: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed save of ``target`` left in its folder (only this writer's own names
    for that target); return their paths. Called before every save, so a killed run's leftovers go at the next."""
    target = os.path.abspath(os.fspath(target))
    folder, pattern = os.path.dirname(target), _temp_pattern(target)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(folder, name)
        if pattern.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc/self/status); elsewhere it is set
    and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _set_mode(handle: int, path: str, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(handle, mode)
    else:  # Windows
        os.chmod(path, mode)


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
