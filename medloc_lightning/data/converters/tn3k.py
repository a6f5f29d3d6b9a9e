"""`medloc-data tn3k`: TN3K thyroid ultrasound (images + nodule masks) -> grounding records.

Layout under ``--root``: ``trainval-image/``, ``trainval-mask/``, ``test-image/``, ``test-mask/`` (mask = same stem,
any image extension). The official test split is kept; val is carved from trainval by a seeded split, or taken
from the official ``tn3k-trainval-fold{N}.json`` with ``--fold N``.
"""
from __future__ import annotations

import argparse
import json
import os

from medloc_lightning.data.converters.common import (ConversionError, ConversionReport, Item, Output, Skip,
                                                     add_output_arguments, output_options, parallel_map, phrase,
                                                     require_dir, run_cli)
from medloc_lightning.data.converters.maskops import image_and_mask_box
from medloc_lightning.data.images import is_image_file

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


def convert_tn3k(root: str | os.PathLike, out: str | os.PathLike, *, fold: int | None = None,
                 components: str = "all", threshold: float | None = None, seed: int = 0, val_ratio: float = 0.1,
                 strict: bool = False, absolute_paths: bool = False, overwrite: bool = False) -> ConversionReport:
    """Convert TN3K under ``root`` into ``out/{train,val,test}.jsonl``: the official test split is kept; val is
    carved from trainval by the seeded split, or taken from ``root/tn3k-trainval-fold{fold}.json``.

    Raises :class:`ConversionError` on unusable inputs and :class:`NothingWritten` when nothing is left to write.
    """
    output = Output(out, "tn3k", [root], seed=seed, val_ratio=val_ratio, strict=strict,
                    absolute_paths=absolute_paths, overwrite=overwrite)
    root = require_dir(os.fspath(root), "--root")
    missing = [f"{p}-{k}" for p in PARTS for k in ("image", "mask") if not os.path.isdir(os.path.join(root, f"{p}-{k}"))]
    if missing:
        raise ConversionError(f"--root {root}: missing folder(s) {', '.join(missing)} (expected the TN3K layout)")
    split_of = read_fold(os.path.join(root, f"tn3k-trainval-fold{fold}.json")) if fold is not None else None
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
            elif part == "trainval" and split_of is not None and stem not in split_of:
                skips.append(Skip(paths[0], f"not listed in tn3k-trainval-fold{fold}.json"))
            else:
                jobs.append((part, stem, paths[0], masks[stem][0]))
        skips += [Skip(p, f"mask without an image in {part}-image/") for stem, ps in masks.items()
                  if stem not in images for p in ps]
    items, multi = [], 0
    results = parallel_map(lambda job: image_and_mask_box(job[2], job[3], components, threshold), jobs)
    for (part, stem, image, _), result in zip(jobs, results):
        if isinstance(result, Skip):
            skips.append(result)
            continue
        size, box, count = result
        multi += count > 1
        record_id = f"{part}-{stem}"
        record = {"id": record_id, "image": image, "query": phrase(record_id, TEMPLATES),
                  "bbox": [float(v) for v in box], "width": size[0], "height": size[1],
                  "dataset": "tn3k", "modality": "ultrasound", "label": "thyroid nodule"}
        split = "test" if part == "test" else None if split_of is None else split_of[stem]
        items.append(Item(record, group=record_id, split=split))
    notes = [f"{multi} masks have several 8-connected components; boxes use --components {components}"] if multi else []
    return output.write(items, skips, notes)


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
    """`medloc-data tn3k`: :func:`convert_tn3k` with the command-line options."""
    return run_cli(lambda: convert_tn3k(args.root, args.out, fold=args.fold, components=args.components,
                                        threshold=args.threshold, **output_options(args)))
