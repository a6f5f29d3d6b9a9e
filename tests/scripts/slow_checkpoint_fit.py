"""Run by tests/checkpointing/test_checkpoint_plugin.py: `medloc fit` whose writes of ``last.ckpt`` hang once one exists.

argv: the `medloc` arguments. Environment: SLOW_CKPT_DIR (the checkpoint folder), SLOW_CKPT_MARKER (touched
when a save hangs). Any file opened for writing (by path, or by descriptor with ``os.fdopen``) in SLOW_CKPT_DIR
whose name contains ``last.ckpt``, once a ``last.ckpt`` exists, gets half of its first write (or nothing, if it
is copied by file descriptor) and then hangs, so the test can SIGKILL the run in the middle of a save, whatever
the writer does.
"""
import builtins
import os
import sys
import time
from pathlib import Path

FOLDER = os.path.realpath(os.environ["SLOW_CKPT_DIR"])
MARKER = Path(os.environ["SLOW_CKPT_MARKER"])
_open = builtins.open


def _hang() -> None:
    MARKER.touch()
    time.sleep(3600)


class HangingFile:
    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        self._f.write(bytes(data)[: max(1, len(data) // 2)])
        self._f.flush()
        os.fsync(self._f.fileno())
        _hang()
        return len(data)

    def fileno(self) -> int:  # shutil copies by descriptor (sendfile): hang before it starts
        _hang()
        return self._f.fileno()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def hanging_open(file, mode="r", *args, **kwargs):
    hang = False
    if isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax"):
        path = os.path.realpath(os.fspath(file))
        hang = (os.path.dirname(path) == FOLDER and "last.ckpt" in os.path.basename(path)
                and os.path.isfile(os.path.join(FOLDER, "last.ckpt")))  # checked before opening truncates it
    f = _open(file, mode, *args, **kwargs)
    return HangingFile(f) if hang else f


_fdopen = os.fdopen


def hanging_fdopen(fd, mode="r", *args, **kwargs):
    # a writer that opens its file by descriptor (mkstemp + os.fdopen): the path comes from /proc
    f = _fdopen(fd, mode, *args, **kwargs)
    if any(m in mode for m in "wax"):
        try:
            path = os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return f
        if (os.path.dirname(path) == FOLDER and "last.ckpt" in os.path.basename(path)
                and os.path.isfile(os.path.join(FOLDER, "last.ckpt"))):
            return HangingFile(f)
    return f


builtins.open = hanging_open
os.fdopen = hanging_fdopen

from medloc_lightning.cli import main  # noqa: E402

main(sys.argv[1:])
