"""`medloc-data masks`: any images + binary masks folder pair -> grounding records with one fixed query.

Images are found recursively under ``--images``; the mask of ``NAME.ext`` is ``NAME{--mask-suffix}.<any image
extension>`` anywhere under ``--masks`` (or exactly ``NAME{suffix}`` when the suffix ends in an extension).
With several connected components the box is the largest 8-connected one (default) or that of all foreground.
"""
from __future__ import annotations

import argparse
import os

from medloc_lightning.data.converters.common import (ConversionError, ConversionReport, Item, Output, Skip,
                                                     add_output_arguments, add_record_arguments, output_options,
                                                     parallel_map, require_dir, run_cli)
from medloc_lightning.data.converters.maskops import image_and_mask_box
from medloc_lightning.data.images import IMAGE_EXTENSIONS, is_image_file


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


def convert_masks(images: str | os.PathLike, masks: str | os.PathLike, query: str, out: str | os.PathLike, *,
                  mask_suffix: str = "", components: str = "largest", threshold: float | None = None,
                  label: str | None = None, dataset: str | None = None, modality: str | None = None,
                  seed: int = 0, val_ratio: float = 0.1, test_ratio: float = 0.1, strict: bool = False,
                  absolute_paths: bool = False, overwrite: bool = False) -> ConversionReport:
    """Convert an images folder plus a masks folder into ``out/{train,val,test}.jsonl``, one record per image with
    a usable mask, every record with ``query``. The box is that of the largest 8-connected mask component
    (``components="largest"``) or of all foreground (``"all"``); the split is drawn per image.

    Raises :class:`ConversionError` on unusable inputs and :class:`NothingWritten` when nothing is left to write.
    """
    output = Output(out, "masks", [images, masks], seed=seed, val_ratio=val_ratio, test_ratio=test_ratio,
                    strict=strict, absolute_paths=absolute_paths, overwrite=overwrite)
    if not query.strip():
        raise ConversionError("--query must not be empty")
    images, masks = os.fspath(images), os.fspath(masks)
    same = os.path.realpath(require_dir(images, "--images")) == os.path.realpath(require_dir(masks, "--masks"))
    if same and not mask_suffix:
        raise ConversionError("--images and --masks are the same folder: give --mask-suffix to tell masks apart")
    found: dict[str, list[str]] = {}
    mask_paths = set()
    for path in walk_images(masks):
        key = mask_key(os.path.basename(path), mask_suffix)
        if key is not None:
            found.setdefault(key, []).append(path)
            mask_paths.add(os.path.abspath(path))
    pictures: dict[str, list[str]] = {}
    for path in walk_images(images):
        if os.path.abspath(path) not in mask_paths:  # masks may live inside the images folder
            pictures.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
    jobs, skips = [], []
    for key, paths in pictures.items():
        if len(paths) > 1:
            skips += [Skip(p, f"several images share the stem {key!r}: {', '.join(paths)}") for p in paths]
        elif key not in found:
            wanted = key + mask_suffix + ("" if mask_suffix.lower().endswith(IMAGE_EXTENSIONS) else ".*")
            skips.append(Skip(paths[0], f"no mask {wanted} under --masks"))
        elif len(found[key]) > 1:
            skips.append(Skip(paths[0], f"several masks match: {', '.join(found[key])}"))
        else:
            jobs.append((key, paths[0], found[key][0]))
    skips += [Skip(p, "mask without an image") for key, ps in found.items() if key not in pictures for p in ps]
    extra = {k: v for k, v in (("dataset", dataset), ("modality", modality), ("label", label)) if v}
    items, multi = [], 0
    results = parallel_map(lambda job: image_and_mask_box(job[1], job[2], components, threshold), jobs)
    for (key, image, _), result in zip(jobs, results):
        if isinstance(result, Skip):
            skips.append(result)
            continue
        size, box, count = result
        multi += count > 1
        record = {"id": key, "image": image, "query": query, "bbox": [float(v) for v in box],
                  "width": size[0], "height": size[1], **extra}
        items.append(Item(record, group=key))
    notes = [f"{multi} masks have several 8-connected components; boxes use --components {components}"] if multi else []
    return output.write(items, skips, notes)


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
    """`medloc-data masks`: :func:`convert_masks` with the command-line options."""
    return run_cli(lambda: convert_masks(
        args.images, args.masks, args.query, args.out, mask_suffix=args.mask_suffix, components=args.components,
        threshold=args.threshold, label=args.label, dataset=args.dataset, modality=args.modality,
        **output_options(args)))
