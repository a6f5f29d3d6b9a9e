"""How `medloc` and `medloc-data` end on a user error: one ``PROG: error: ...`` line, not pages of traceback.

A user error is a `medloc_lightning.errors.MedlocError`, which medloc raises where it detects a user's mistake,
found anywhere in the chain of exceptions (jsonargparse wraps the errors of the classes it builds). Anything
else keeps its traceback, and so does every error when ``MEDLOC_TRACEBACK=1``.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

from medloc_lightning.errors import MedlocError

TRACEBACK_ENV = "MEDLOC_TRACEBACK"
EXIT_CODE = 2
T = TypeVar("T")


def find_user_error(err: BaseException | None) -> BaseException | None:
    """The first `MedlocError` in ``err``'s chain (itself, then its causes), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MedlocError):
            return err
        err = err.__cause__ or err.__context__
    return None


def report_user_errors(prog: str, run: Callable[[], T]) -> T:
    """``run()``; a user error prints ``PROG: error: message`` on stderr and exits with status 2."""
    try:
        return run()
    except Exception as err:
        found = None if os.environ.get(TRACEBACK_ENV, "") not in ("", "0") else find_user_error(err)
        if found is None:
            raise
        print(f"{prog}: error: {found}", file=sys.stderr)
        raise SystemExit(EXIT_CODE) from None
