"""`medloc-data tn3k`: TN3K thyroid ultrasound (images + nodule masks) -> grounding records.

Layout under ``--root``: ``trainval-image/``, ``trainval-mask/``, ``test-image/``, ``test-mask/`` (mask = same stem,
any image extension). The official test split is kept; val is carved from trainval by a seeded split, or taken
from the official ``tn3k-trainval-fold{N}.json`` with ``--fold N``.
"""
from __future__ import annotations

import argparse
import json
import os

from medloc_lightning.data.converters.common import (ConversionError, Item, Skip, add_output_arguments, finish,
                                                     guarded, parallel_map, phrase, require_dir)
from medloc_lightning.data.converters.maskops import MaskError, box_from_mask_file
from medloc_lightning.data.images import image_size, is_image_file

PARTS = ("trainval", "test")
TEMPLATES = (
    "the thyroid nodule",
    "the thyroid nodule in this ultrasound image",
    "the nodule in the thyroid gland",
    "the thyroid nodule on this ultrasound scan",
)


def list_images(folder: str) -> dict[str, list[str]]:
    """``stem -> [paths]`` of the image files directly inside ``folder`` (several paths = ambiguous)."""
    out: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if is_image_file(name) and os.path.isfile(path):
            out.setdefault(os.path.splitext(name)[0], []).append(path)
    return out


def read_fold(path: str) -> dict[str, str]:
    """``stem -> train|val`` from an official fold file (ids may be ints, zero-padded to 4 digits, or stems)."""
    try:
        with open(path, encoding="utf-8") as f:
            fold = json.load(f)
        out = {}
        for split in ("train", "val"):
            for name in fold[split]:
                stem = f"{name:04d}" if isinstance(name, int) else os.path.splitext(str(name))[0]
                out[stem] = split
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConversionError(f"fold file {path}: {err!r}; expected {{\"train\": [ids], \"val\": [ids]}}") from err
    return out


def _convert_one(job: tuple[str, str, str, str, argparse.Namespace]) -> tuple[Item | Skip, int]:
    part, stem, image, mask, args = job
    try:
        size = image_size(image)
    except Exception as err:
        return Skip(image, f"unreadable image: {err}"), 0
    try:
        box, count = box_from_mask_file(mask, size, args.components, args.threshold)
    except MaskError as err:
        return Skip(mask, str(err)), 0
    record_id = f"{part}-{stem}"
    record = {"id": record_id, "image": image, "query": phrase(record_id, TEMPLATES),
              "bbox": [float(v) for v in box], "width": size[0], "height": size[1],
              "dataset": "tn3k", "modality": "ultrasound", "label": "thyroid nodule"}
    return Item(record, group=record_id, split="test" if part == "test" else None), count


def convert(args: argparse.Namespace) -> tuple[list[Item], list[Skip], list[str]]:
    """Items (test fixed, trainval drawn or from the fold file), skips and notes."""
    root = require_dir(args.root, "--root")
    missing = [f"{p}-{k}" for p in PARTS for k in ("image", "mask") if not os.path.isdir(os.path.join(root, f"{p}-{k}"))]
    if missing:
        raise ConversionError(f"--root {root}: missing folder(s) {', '.join(missing)} (expected the TN3K layout)")
    fold = read_fold(os.path.join(root, f"tn3k-trainval-fold{args.fold}.json")) if args.fold is not None else None
    jobs, skips = [], []
    for part in PARTS:
        images = list_images(os.path.join(root, f"{part}-image"))
        masks = list_images(os.path.join(root, f"{part}-mask"))
        for stem, paths in images.items():
            if len(paths) > 1:
                skips += [Skip(p, f"several images share the stem {stem!r}: {', '.join(paths)}") for p in paths]
            elif stem not in masks:
                skips.append(Skip(paths[0], f"no mask {stem}.* in {part}-mask/"))
            elif len(masks[stem]) > 1:
                skips.append(Skip(paths[0], f"several masks match: {', '.join(masks[stem])}"))
            elif part == "trainval" and fold is not None and stem not in fold:
                skips.append(Skip(paths[0], f"not listed in tn3k-trainval-fold{args.fold}.json"))
            else:
                jobs.append((part, stem, paths[0], masks[stem][0], args))
        skips += [Skip(p, f"mask without an image in {part}-image/") for stem, ps in masks.items()
                  if stem not in images for p in ps]
    items, multi = [], 0
    for result, count in parallel_map(_convert_one, jobs):
        (items if isinstance(result, Item) else skips).append(result)
        multi += count > 1
    if fold is not None:
        for item in items:
            if item.split is None:
                item.split = fold[item.record["id"].split("-", 1)[1]]
    notes = [f"{multi} masks have several 8-connected components; boxes use --components {args.components}"] if multi else []
    return items, skips, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``medloc-data tn3k``."""
    parser.description = ("Convert TN3K (trainval-image/, trainval-mask/, test-image/, test-mask/) into grounding "
                          "records; the official test split is kept and val is carved from trainval.")
    parser.add_argument("--root", required=True, metavar="DIR", help="the TN3K folder")
    parser.add_argument("--fold", type=int, default=None, metavar="N",
                        help="take train/val from ROOT/tn3k-trainval-foldN.json instead of the seeded split")
    parser.add_argument("--components", choices=("all", "largest"), default="all",
                        help="box of all mask foreground (default) or of the largest 8-connected component")
    parser.add_argument("--threshold", type=float, default=None,
                        help="foreground = pixel value > THRESHOLD (default: 127 for JPEG masks, 0 otherwise)")
    add_output_arguments(parser, test_ratio=False)


def run(args: argparse.Namespace) -> int:
    """Convert and write; the exit code is that of ``common.finish`` (2 on fatal input errors)."""
    def body() -> int:
        items, skips, notes = convert(args)
        return finish(args, items, skips, notes=notes)
    return guarded(body)
