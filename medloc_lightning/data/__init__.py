"""Grounding data: the JSONL record schema and its validation (`CheckedRecord`: a record file's line), the
records a batch holds (`records.Record`: a mapping with the decoded image), GroundingDataModule, converters,
`medloc-data`.

The Lightning/HF-datasets side is imported lazily so the schema, converters and CLI stay light to import.
"""
from __future__ import annotations

import importlib
from typing import Any

import warnings

from medloc_lightning.data.schema import CheckedRecord, Problem, read_records, validate_records

_LAZY = {
    "GroundingDataModule": "medloc_lightning.data.datamodule",
    "SyntheticDataModule": "medloc_lightning.data.datamodule",
    "GroundingDataset": "medloc_lightning.data.datamodule",
    "RecordError": "medloc_lightning.data.datamodule",
    "collate_records": "medloc_lightning.data.datamodule",
    "load_record_file": "medloc_lightning.data.datamodule",
}

__all__ = ["CheckedRecord", "Problem", "read_records", "validate_records", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "Record":  # the checked file record's old name; a batch's record is `records.Record`
        warnings.warn("medloc_lightning.data.Record is now medloc_lightning.data.CheckedRecord; the old name will be "
                      "removed in the next release", DeprecationWarning, stacklevel=2)
        return CheckedRecord
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medloc_lightning.data' has no attribute {name!r}")
