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

from medloc_lightning.data.converters.common import (ConversionError, Item, Skip, add_output_arguments, finish,
                                                     guarded, parallel_map, phrase, require_dir, require_file)
from medloc_lightning.data.converters.maskops import MaskError, box_from_mask_file
from medloc_lightning.data.images import image_size, is_image_file

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


def _convert_one(job: tuple[Row, str, str]) -> Item | Skip:
    row, image, mask = job
    try:
        width, height = image_size(image)
    except Exception as err:
        return Skip(image, f"unreadable image: {err}")
    try:
        box, _ = box_from_mask_file(mask, (width, height), "all")
    except MaskError as err:
        return Skip(mask, str(err))
    record = {"id": row.image_id, "image": image, "query": ham_query(row.dx, row.image_id),
              "bbox": [float(v) for v in box], "width": width, "height": height,
              "dataset": "ham10000", "modality": "dermoscopy", "label": row.dx}
    return Item(record, group=row.lesion_id)


def convert(args: argparse.Namespace) -> tuple[list[Item], list[Skip]]:
    """Items (grouped by lesion) and everything that could not be converted."""
    for folder in args.images:
        require_dir(folder, "--images")
    require_dir(args.masks, "--masks")
    rows, skips = read_metadata(require_file(args.metadata, "--metadata"))
    images, image_skips = index_files(args.images, _IMAGE_RE, "image")
    masks, mask_skips = index_files([args.masks], _MASK_RE, "mask")
    skips += image_skips + mask_skips
    jobs = []
    listed = set()
    for row in rows:
        listed.add(row.image_id)
        if row.image_id not in images:
            skips.append(Skip(f"{args.metadata}:{row.line}", f"no image {row.image_id}.jpg under --images"))
        elif row.image_id not in masks:
            skips.append(Skip(images[row.image_id], f"no mask {row.image_id}_segmentation.png under --masks"))
        else:
            jobs.append((row, images[row.image_id], masks[row.image_id]))
    skips += [Skip(path, "image not listed in the metadata CSV") for key, path in sorted(images.items()) if key not in listed]
    skips += [Skip(path, "mask of an image not listed in the metadata CSV")
              for key, path in sorted(masks.items()) if key not in listed]
    items = []
    for result in parallel_map(_convert_one, jobs):
        (items if isinstance(result, Item) else skips).append(result)
    return items, skips


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
    """Convert and write; see :func:`medloc_lightning.data.converters.common.finish` for the exit code."""
    def body() -> int:
        items, skips = convert(args)
        if not items and not skips:
            raise ConversionError(f"no metadata rows in {args.metadata}")
        return finish(args, items, skips, inputs=[args.metadata])
    return guarded(body)
