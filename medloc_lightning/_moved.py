"""Import paths that moved, kept for one release: importing one warns and gives the names of its new home.

`medloc_lightning/__init__.py` puts `MovedFinder` first on ``sys.meta_path``: it answers only for the old paths,
which no file provides any more. Delete an entry of `MOVED` (and this module with the last one) one release after its move.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import warnings
from types import ModuleType
from typing import Any, Sequence

MOVED = {
    "medloc_lightning.atomic": "medloc_lightning.checkpointing.atomic",
    "medloc_lightning.checkpoints": "medloc_lightning.checkpointing.loading",
    "medloc_lightning.checkpoint_io": "medloc_lightning.checkpointing.plugin",
    "medloc_lightning.counters": "medloc_lightning.module",
    "medloc_lightning.strategies": "medloc_lightning.policies.qwen.strategy",
    "medloc_lightning.policies.box_mixture": "medloc_lightning.policies.box.mixture",
    "medloc_lightning.policies.box_net": "medloc_lightning.policies.box.net",
    **{f"medloc_lightning.policies.qwen_{name}": f"medloc_lightning.policies.qwen.{name}"
       for name in ("batch", "loading", "prefill", "processor", "prompts", "tiny")},
}
"""Old module path -> new one."""


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of `MOVED`: the module it makes holds the new module's names and warns once."""

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def exec_module(self, module: ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; the old import path will be removed in the next release",
                      DeprecationWarning, stacklevel=2)
        module.__dict__.update({k: v for k, v in vars(importlib.import_module(new)).items()
                                if not (k.startswith("__") and k.endswith("__"))})
