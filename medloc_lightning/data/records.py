"""A record as a batch holds it: the mapping every policy and module reads, and the helpers that read it.

A batch is a list of these: `GroundingDataModule` builds them from the record files (`schema.CheckedRecord`s with
their images decoded), and any other loader may too.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from medloc_lightning.errors import DataError

Record = Mapping[str, Any]
"""One grounding record: ``id``, ``image`` (PIL, RGB), ``query``, ``bbox`` [x1, y1, x2, y2] in original
pixels, ``width``, ``height`` and optional ``dataset``, ``modality``, ``label``."""


def gt_boxes(batch: Sequence[Record], device: torch.device | str | None = None) -> Tensor:
    """[B, 4] float32 ground-truth boxes of a batch, in original pixels."""
    boxes = [list(map(float, r["bbox"])) for r in batch]
    return torch.tensor(boxes, dtype=torch.float32, device=device).reshape(len(boxes), 4)


def describe_record(record: Record) -> str:
    """``record 'id' (image path)``, for errors that must name the bad record."""
    path = record.get("image_path")
    return f"record {record.get('id')!r}" + (f" ({path})" if path else "")


def record_size(record: Record) -> tuple[int, int]:
    """The record's ``(width, height)`` fields as positive ints."""
    try:
        width, height = int(record["width"]), int(record["height"])
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{describe_record(record)}: fields 'width' and 'height' must be positive ints ({err!r})"
                         ) from err
    if width < 1 or height < 1:
        raise DataError(f"{describe_record(record)}: fields 'width' and 'height' must be positive, "
                         f"got {width}x{height}")
    return width, height


def record_image(record: Record) -> Any:
    """The record's PIL image in RGB, checked against its ``width``/``height`` fields."""
    from PIL import Image

    image = record.get("image")
    if not isinstance(image, Image.Image):
        raise DataError(f"{describe_record(record)}: field 'image' must be a PIL image, got {type(image).__name__}")
    width, height = record_size(record)
    if image.size != (width, height):
        raise DataError(f"{describe_record(record)}: field 'image' is {image.size[0]}x{image.size[1]} px but "
                         f"'width', 'height' say {width}x{height}")
    return image if image.mode == "RGB" else image.convert("RGB")
