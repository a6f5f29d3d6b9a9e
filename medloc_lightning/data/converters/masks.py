"""`medloc-data masks`: any images + binary masks folder pair -> grounding records with one fixed query.

Images are found recursively under ``--images``; the mask of ``NAME.ext`` is ``NAME{--mask-suffix}.<any image
extension>`` anywhere under ``--masks`` (or exactly ``NAME{suffix}`` when the suffix ends in an extension).
With several connected components the box is the largest 8-connected one (default) or that of all foreground.
"""
from __future__ import annotations

import argparse
import os

from medloc_lightning.data.converters.common import (ConversionError, Item, Skip, add_output_arguments,
                                                     add_record_arguments, finish, guarded, parallel_map, require_dir)
from medloc_lightning.data.converters.maskops import MaskError, box_from_mask_file
from medloc_lightning.data.images import IMAGE_EXTENSIONS, image_size, is_image_file


def walk_images(folder: str) -> list[str]:
    """Every image file under ``folder``, in sorted order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out += [os.path.join(dirpath, n) for n in sorted(filenames) if is_image_file(n)]
    return out


def mask_key(name: str, suffix: str) -> str | None:
    """The image stem a mask file name belongs to, or None if the name does not carry the suffix."""
    if suffix.lower().endswith(IMAGE_EXTENSIONS):
        return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None
    stem = os.path.splitext(name)[0]
    if not suffix:
        return stem
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else None


def _convert_one(job: tuple[str, str, str, argparse.Namespace]) -> tuple[Item | Skip, int]:
    key, image, mask, args = job
    try:
        size = image_size(image)
    except Exception as err:
        return Skip(image, f"unreadable image: {err}"), 0
    try:
        box, count = box_from_mask_file(mask, size, args.components, args.threshold)
    except MaskError as err:
        return Skip(mask, str(err)), 0
    record = {"id": key, "image": image, "query": args.query, "bbox": [float(v) for v in box],
              "width": size[0], "height": size[1]}
    record.update({k: v for k, v in (("dataset", args.dataset), ("modality", args.modality), ("label", args.label)) if v})
    return Item(record, group=key), count


def convert(args: argparse.Namespace) -> tuple[list[Item], list[Skip], list[str]]:
    """Items (one per image with a usable mask), skips and notes."""
    if not args.query.strip():
        raise ConversionError("--query must not be empty")
    same = os.path.realpath(require_dir(args.images, "--images")) == os.path.realpath(require_dir(args.masks, "--masks"))
    if same and not args.mask_suffix:
        raise ConversionError("--images and --masks are the same folder: give --mask-suffix to tell masks apart")
    masks: dict[str, list[str]] = {}
    mask_paths = set()
    for path in walk_images(require_dir(args.masks, "--masks")):
        key = mask_key(os.path.basename(path), args.mask_suffix)
        if key is not None:
            masks.setdefault(key, []).append(path)
            mask_paths.add(os.path.abspath(path))
    images: dict[str, list[str]] = {}
    for path in walk_images(require_dir(args.images, "--images")):
        if os.path.abspath(path) not in mask_paths:  # masks may live inside the images folder
            images.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
    jobs, skips = [], []
    for key, paths in images.items():
        if len(paths) > 1:
            skips += [Skip(p, f"several images share the stem {key!r}: {', '.join(paths)}") for p in paths]
        elif key not in masks:
            wanted = key + args.mask_suffix + ("" if args.mask_suffix.lower().endswith(IMAGE_EXTENSIONS) else ".*")
            skips.append(Skip(paths[0], f"no mask {wanted} under --masks"))
        elif len(masks[key]) > 1:
            skips.append(Skip(paths[0], f"several masks match: {', '.join(masks[key])}"))
        else:
            jobs.append((key, paths[0], masks[key][0], args))
    skips += [Skip(p, "mask without an image") for key, ps in masks.items() if key not in images for p in ps]
    items, multi = [], 0
    for result, count in parallel_map(_convert_one, jobs):
        (items if isinstance(result, Item) else skips).append(result)
        multi += count > 1
    notes = [f"{multi} masks have several 8-connected components; boxes use --components {args.components}"] if multi else []
    return items, skips, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``medloc-data masks``."""
    parser.description = "Convert a folder of images plus a folder of binary masks into grounding records."
    parser.add_argument("--images", required=True, metavar="DIR", help="folder searched recursively for images")
    parser.add_argument("--masks", required=True, metavar="DIR", help="folder searched recursively for masks")
    parser.add_argument("--query", required=True, metavar="TEXT", help="the referring text of every record")
    parser.add_argument("--mask-suffix", default="", metavar="SUFFIX",
                        help="mask of NAME.ext is NAME+SUFFIX.<image ext> (default '': same stem); "
                             "a suffix ending in an extension (e.g. _mask.png) must match exactly")
    parser.add_argument("--components", choices=("largest", "all"), default="largest",
                        help="box of the largest 8-connected component (default) or of all foreground")
    parser.add_argument("--threshold", type=float, default=None,
                        help="foreground = pixel value > THRESHOLD (default: 127 for JPEG masks, 0 otherwise)")
    parser.add_argument("--label", default=None, help="label stored in each record (default none)")
    add_record_arguments(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Convert and write; the exit code is that of ``common.finish`` (2 on fatal input errors)."""
    def body() -> int:
        items, skips, notes = convert(args)
        return finish(args, items, skips, notes=notes)
    return guarded(body)
