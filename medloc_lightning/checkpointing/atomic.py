"""Atomic file writes: a unique hidden temporary file beside the target, renamed over it when complete.

A reader sees the old file or the new one, never half of one, and a failed write removes its temporary file
(only a killed process leaves one: ``.NAME.XXXXXXXX.tmp``, which `remove_stale_temporaries` deletes). The
file gets the mode a plain ``open(path, "w")`` would give (``0o666`` less the umask), not ``mkstemp``'s 0600.
Used for checkpoints, record files and the synthetic data's stamp.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import IO, Any, Iterable, Iterator

_SUFFIX = ".tmp"


def _prefix(target: str) -> str:
    return f".{os.path.basename(target)}."


def current_umask() -> int:
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


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", fsync: bool = False,
                **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a new temporary file beside ``path`` for writing (``mode`` "w" or "wb"; ``kwargs`` go to
    ``os.fdopen``); when the block ends without error it is flushed (and synced to disk with ``fsync``) and
    renamed over ``path``, otherwise deleted."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    target = os.path.abspath(os.fspath(path))
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=_prefix(target), suffix=_SUFFIX)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(handle, 0o666 & ~current_umask())
        else:  # Windows
            os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(handle, mode, **kwargs) as f:
            handle = -1  # closed with f from here on
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if handle >= 0:
            os.close(handle)
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike[str], chunks: str | Iterable[str]) -> None:
    """Write text (UTF-8) to ``path`` atomically; ``chunks`` is the text or an iterable of its pieces."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.writelines([chunks] if isinstance(chunks, str) else chunks)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files killed writes of ``path`` left in its folder (only `atomic_open`'s names for
    that file); return their paths."""
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    pattern = re.compile(re.escape(_prefix(target)) + r"[a-z0-9_]{8}" + re.escape(_SUFFIX))  # mkstemp's names
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        candidate = os.path.join(folder, name)
        if pattern.fullmatch(name) and os.path.isfile(candidate) and not os.path.islink(candidate):
            with contextlib.suppress(FileNotFoundError):
                os.remove(candidate)
                removed.append(candidate)
    return removed
