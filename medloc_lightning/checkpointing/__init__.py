"""Checkpoint files, in one place: atomic writes (`atomic`), ``weights_only=True`` reads of local files and URLs
(`loading`), the Lightning plugin that does both (`plugin`), and the Trainer that checks every ``ckpt_path``
first and uses the plugin (`trainer`).

The names below load on first use: record files and the synthetic data write atomically without importing
torch or Lightning.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(("atomic_open", "remove_stale_temporaries", "write_text"), "medloc_lightning.checkpointing.atomic"),
    **dict.fromkeys(("UnsafeCheckpointError", "fetch", "is_url", "load_checkpoint", "verify_checkpoint"),
                    "medloc_lightning.checkpointing.loading"),
    "AtomicCheckpointIO": "medloc_lightning.checkpointing.plugin",
    **dict.fromkeys(("CheckpointingTrainer", "checked_ckpt_path"), "medloc_lightning.checkpointing.trainer"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medloc_lightning.checkpointing' has no attribute {name!r}")
