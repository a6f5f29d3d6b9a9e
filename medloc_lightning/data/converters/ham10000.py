"""`medloc-data ham10000`: HAM10000 dermoscopy images + lesion segmentation masks -> grounding records.

Layout: ``ISIC_xxxxxxx.jpg`` anywhere under each ``--images`` folder, ``ISIC_xxxxxxx_segmentation.png`` under
``--masks``, and ``HAM10000_metadata.csv`` with ``lesion_id``, ``image_id``, ``dx``. The box is the tight box of
all mask foreground; the split is grouped by ``lesion_id`` so one lesion's images never straddle splits.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
from dataclasses import dataclass
from typing import Sequence

from medloc_lightning.data.converters.common import (ConversionError, ConversionReport, Item, Output, Skip,
                                                     add_output_arguments, output_options, parallel_map, phrase,
                                                     require_dir, require_file, run_cli)
from medloc_lightning.data.converters.maskops import image_and_mask_box
from medloc_lightning.data.images import is_image_file

# dx code -> (plain name, "lesion" form used where the name alone reads oddly)
DIAGNOSES = {
    "akiec": ("actinic keratosis / intraepithelial carcinoma", "actinic keratosis / intraepithelial carcinoma lesion"),
    "bcc": ("basal cell carcinoma", "basal cell carcinoma lesion"),
    "bkl": ("benign keratosis-like lesion", "benign keratosis-like lesion"),
    "df": ("dermatofibroma", "dermatofibroma lesion"),
    "mel": ("melanoma", "melanoma lesion"),
    "nv": ("melanocytic nevus", "melanocytic nevus"),
    "vasc": ("vascular lesion", "vascular lesion"),
}
TEMPLATES = (
    "the {lesion}",
    "the {name} in this dermoscopy image",
    "the skin lesion diagnosed as {name}",
    "the {lesion} on the skin",
)
_IMAGE_RE = re.compile(r"^(ISIC_\d+)\.[A-Za-z]+$")
_MASK_RE = re.compile(r"^(ISIC_\d+)_segmentation\.[A-Za-z]+$")
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")


def ham_query(dx: str, image_id: str) -> str:
    """The diagnosis in words, phrased by a stable hash of the image id (e.g. ``the melanoma lesion``)."""
    name, lesion = DIAGNOSES[dx]
    return phrase(image_id, TEMPLATES, name=name, lesion=lesion)


@dataclass(frozen=True)
class Row:
    """One metadata line."""

    line: int
    image_id: str
    lesion_id: str
    dx: str


def read_metadata(path: str) -> tuple[list[Row], list[Skip]]:
    """Rows of the metadata CSV; rows with empty fields, unknown dx codes or repeated image ids are skipped."""
    rows, skips, seen = [], [], set()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConversionError(f"--metadata {path}: missing column(s) {', '.join(missing)}; "
                                  f"found {', '.join(reader.fieldnames or []) or 'no header'}")
        for values in reader:
            where = f"{path}:{reader.line_num}"
            image_id, lesion_id, dx = ((values.get(c) or "").strip() for c in ("image_id", "lesion_id", "dx"))
            empty = [c for c, v in zip(("image_id", "lesion_id", "dx"), (image_id, lesion_id, dx)) if not v]
            if empty:
                skips.append(Skip(where, f"empty {', '.join(empty)}"))
            elif dx.lower() not in DIAGNOSES:
                skips.append(Skip(where, f"unknown dx code {dx!r} (known: {', '.join(DIAGNOSES)})"))
            elif image_id in seen:
                skips.append(Skip(where, f"image_id {image_id} listed twice"))
            else:
                seen.add(image_id)
                rows.append(Row(reader.line_num, image_id, lesion_id, dx.lower()))
    return rows, skips


def index_files(folders: list[str], pattern: re.Pattern[str], what: str) -> tuple[dict[str, str], list[Skip]]:
    """``id -> path`` for every file under the folders whose name matches ``pattern``; repeats are reported."""
    found: dict[str, str] = {}
    skips = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                match = pattern.match(name)
                if not match or not is_image_file(name):
                    continue
                path = os.path.join(dirpath, name)
                key = match.group(1)
                if key in found and not os.path.samefile(found[key], path):
                    skips.append(Skip(path, f"second {what} for {key} (using {found[key]})"))
                found.setdefault(key, path)
    return found, skips


def convert_ham10000(images: str | os.PathLike | Sequence[str | os.PathLike], masks: str | os.PathLike,
                     metadata: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0, val_ratio: float = 0.1,
                     test_ratio: float = 0.1, strict: bool = False, absolute_paths: bool = False,
                     overwrite: bool = False) -> ConversionReport:
    """Convert HAM10000 (image folders, the lesion mask folder and the metadata CSV) into
    ``out/{train,val,test}.jsonl``: box = tight box of the mask, query = the diagnosis in words, split grouped by
    ``lesion_id``.

    Raises :class:`ConversionError` on unusable inputs and :class:`NothingWritten` when nothing is left to write.
    """
    folders = [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(f) for f in images]
    masks, metadata = os.fspath(masks), os.fspath(metadata)
    output = Output(out, "ham10000", [*folders, masks, metadata], seed=seed, val_ratio=val_ratio,
                    test_ratio=test_ratio, strict=strict, absolute_paths=absolute_paths, overwrite=overwrite)
    for folder in folders:
        require_dir(folder, "--images")
    require_dir(masks, "--masks")
    rows, skips = read_metadata(require_file(metadata, "--metadata"))
    if not rows and not skips:
        raise ConversionError(f"no metadata rows in {metadata}")
    image_paths, image_skips = index_files(folders, _IMAGE_RE, "image")
    mask_paths, mask_skips = index_files([masks], _MASK_RE, "mask")
    skips += image_skips + mask_skips
    jobs = []
    listed = set()
    for row in rows:
        listed.add(row.image_id)
        if row.image_id not in image_paths:
            skips.append(Skip(f"{metadata}:{row.line}", f"no image {row.image_id}.jpg under --images"))
        elif row.image_id not in mask_paths:
            skips.append(Skip(image_paths[row.image_id], f"no mask {row.image_id}_segmentation.png under --masks"))
        else:
            jobs.append((row, image_paths[row.image_id], mask_paths[row.image_id]))
    skips += [Skip(path, "image not listed in the metadata CSV") for key, path in sorted(image_paths.items())
              if key not in listed]
    skips += [Skip(path, "mask of an image not listed in the metadata CSV")
              for key, path in sorted(mask_paths.items()) if key not in listed]
    items = []
    for (row, image, _), result in zip(jobs, parallel_map(lambda job: image_and_mask_box(job[1], job[2]), jobs)):
        if isinstance(result, Skip):
            skips.append(result)
            continue
        (width, height), box, _ = result
        record = {"id": row.image_id, "image": image, "query": ham_query(row.dx, row.image_id),
                  "bbox": [float(v) for v in box], "width": width, "height": height,
                  "dataset": "ham10000", "modality": "dermoscopy", "label": row.dx}
        items.append(Item(record, group=row.lesion_id))
    return output.write(items, skips)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``medloc-data ham10000``."""
    parser.description = ("Convert HAM10000 (images + lesion segmentation masks + metadata CSV) into grounding "
                          "records; box = tight box of the mask, query = the diagnosis in words, split by lesion_id.")
    parser.add_argument("--images", action="append", required=True, metavar="DIR",
                        help="folder searched recursively for ISIC_xxxxxxx.jpg; repeat for part_1 / part_2")
    parser.add_argument("--masks", required=True, metavar="DIR", help="folder with ISIC_xxxxxxx_segmentation.png")
    parser.add_argument("--metadata", required=True, metavar="CSV", help="HAM10000_metadata.csv")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`medloc-data ham10000`: :func:`convert_ham10000` with the command-line options."""
    return run_cli(lambda: convert_ham10000(args.images, args.masks, args.metadata, args.out, **output_options(args)))
