"""`Counters`: running totals of the degenerate cases training survives, each warned about once."""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

COUNTER_KEYS = ("rejected", "empty", "unparsed", "zero_std_groups", "all_fail_groups", "skipped_steps",
                "nonfinite_steps")
"""Prompts rejected up front, empty and unparsed completions, zero-std and all-fail groups, skipped steps, and
optimizer steps skipped for a non-finite loss or gradient."""


class Counters(Mapping[str, int]):
    """Totals since the start of training (restored from checkpoints), logged as ``train/count_<key>``.

    ``add(key, n, warning)`` warns the first time ``key`` is counted; later cases are counted silently.
    ``warn_once(key, warning)`` gives the same single warning for cases counted elsewhere (e.g. summed over ranks).
    """

    def __init__(self, keys: tuple[str, ...] = COUNTER_KEYS) -> None:
        self._counts = dict.fromkeys(keys, 0)
        self._warned: set[str] = set()

    def __getitem__(self, key: str) -> int:
        return self._counts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, key: str, n: int = 1, warning: str | None = None) -> None:
        if key not in self._counts:
            raise KeyError(f"unknown counter {key!r}; known: {sorted(self._counts)}")
        if n <= 0:
            return
        self._counts[key] += int(n)
        if warning is not None:
            self.warn_once(key, warning)

    def warn_once(self, key: str, warning: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"{warning} (counted in train/count_{key}; later cases are counted silently)",
                          stacklevel=3)

    def state_dict(self) -> dict[str, int]:
        return dict(self._counts)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            if key in self._counts:
                self._counts[key] = int(value)

    def __repr__(self) -> str:
        return f"Counters({self._counts})"
