"""`medloc-data coco`: COCO detection annotations -> grounding records ("the {category name}").

A grounding query must name exactly one box, so an image holding several instances of one category (or a
crowd region of it) is ambiguous: by default those instances are skipped and reported; ``--multi largest``
keeps the largest instance with the query "the largest {name}". Crowd regions (``iscrowd=1``) mark groups,
not objects, and are never emitted. Boxes go from ``[x, y, w, h]`` to ``[x, y, x + w, y + h]``; the split is
drawn per image.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from typing import Any

from medloc_lightning.data.converters.common import (ConversionError, ConversionReport, Item, Output, Skip,
                                                     add_output_arguments, add_record_arguments, clip_to_image,
                                                     output_options, read_image_size, require_dir, require_file,
                                                     run_cli)


def load_coco(path: str) -> dict[str, Any]:
    """The annotation JSON with ``images``, ``annotations`` and ``categories`` lists; ConversionError if not."""
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, ValueError) as err:
        raise ConversionError(f"--annotations {path}: {err}") from err
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise ConversionError(f"--annotations {path}: expected an object with 'images', 'annotations' and 'categories' lists")
    return coco


def coco_box(ann: dict[str, Any], width: int, height: int) -> tuple[list[float] | None, str]:
    """``([x1, y1, x2, y2], "")`` clipped to the image, or ``(None, reason)``."""
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        return None, f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None, f"empty bbox [x, y, w, h] = {bbox}"
    return clip_to_image((x, y, x + w, y + h), width, height)


def _image_size_checked(info: dict[str, Any], path: str) -> tuple[tuple[int, int] | None, str]:
    size = read_image_size(path)
    if isinstance(size, str):
        return None, size
    declared = (info.get("width"), info.get("height"))
    if declared != (None, None) and declared != size:  # some exports omit the size; then the file decides
        return None, f"the annotations say {info.get('width')}x{info.get('height')} but the image is {size[0]}x{size[1]}"
    return size, ""


def convert_coco(images: str | os.PathLike, annotations: str | os.PathLike, out: str | os.PathLike, *,
                 multi: str = "skip", dataset: str | None = "coco", modality: str | None = None, seed: int = 0,
                 val_ratio: float = 0.1, test_ratio: float = 0.1, strict: bool = False,
                 absolute_paths: bool = False, overwrite: bool = False) -> ConversionReport:
    """Convert COCO detection annotations into ``out/{train,val,test}.jsonl`` with the query "the {category}".
    Several instances of one category in an image are ambiguous: skipped (``multi="skip"``) or reduced to the
    largest (``"largest"``); the split is drawn per image.

    Raises :class:`ConversionError` on unusable inputs and :class:`NothingWritten` when nothing is left to write.
    """
    if multi not in ("skip", "largest"):
        raise ConversionError(f"multi must be 'skip' or 'largest', got {multi!r}")
    annotations = os.fspath(annotations)
    output = Output(out, "coco", [images, annotations], seed=seed, val_ratio=val_ratio, test_ratio=test_ratio,
                    strict=strict, absolute_paths=absolute_paths, overwrite=overwrite)
    images_dir = require_dir(os.fspath(images), "--images")
    coco = load_coco(require_file(annotations, "--annotations"))
    categories = {c.get("id"): str(c.get("name", "")).replace("_", " ").strip() for c in coco["categories"]
                  if isinstance(c, dict)}
    image_info = {i.get("id"): i for i in coco["images"] if isinstance(i, dict)}
    by_image: dict[Any, dict[Any, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    skips = []
    where = f"{annotations}: annotation"
    for ann in coco["annotations"]:
        if not isinstance(ann, dict):
            skips.append(Skip(f"{annotations}", f"annotation is not an object: {ann!r:.60}"))
        elif ann.get("image_id") not in image_info:
            skips.append(Skip(f"{where} {ann.get('id')}", f"unknown image_id {ann.get('image_id')!r}"))
        elif not categories.get(ann.get("category_id")):
            skips.append(Skip(f"{where} {ann.get('id')}", f"unknown or unnamed category_id {ann.get('category_id')!r}"))
        else:
            by_image[ann["image_id"]][ann["category_id"]].append(ann)
    extra = {k: v for k, v in (("dataset", dataset), ("modality", modality)) if v}
    items = []
    for image_id in sorted(by_image, key=str):
        info = image_info[image_id]
        path = os.path.join(images_dir, str(info.get("file_name", "")))
        size, reason = _image_size_checked(info, path)
        groups = by_image[image_id]
        if size is None:
            n = sum(len(v) for v in groups.values())
            skips.append(Skip(path, f"{reason} ({n} annotations not converted)"))
            continue
        for category_id in sorted(groups, key=str):
            items += _convert_group(multi, extra, image_id, path, size, categories[category_id], groups[category_id],
                                    skips)
    referenced = {a.get("image_id") for a in coco["annotations"] if isinstance(a, dict)}
    unannotated = sum(image_id not in referenced for image_id in image_info)
    notes = [f"{unannotated} images have no annotations (nothing to convert)"] if unannotated else []
    return output.write(items, skips, notes)


def _convert_group(multi: str, extra: dict[str, str], image_id: Any, path: str, size: tuple[int, int], name: str,
                   anns: list[dict[str, Any]], skips: list[Skip]) -> list[Item]:
    """The record(s) of one category in one image, following ``--multi``; everything else goes to ``skips``."""
    crowd = [a for a in anns if a.get("iscrowd")]
    boxes = []
    for ann in anns:
        if ann.get("iscrowd"):
            continue
        box, reason = coco_box(ann, *size)
        if box is None:
            skips.append(Skip(f"{path} (annotation {ann.get('id')})", reason))
        else:
            boxes.append((ann, box))
    for ann in crowd:
        skips.append(Skip(f"{path} (annotation {ann.get('id')})", f"crowd region of '{name}' (iscrowd=1) is never emitted"))
    if not boxes:
        return []
    query = f"the {name}"
    if len(boxes) > 1 or crowd:
        what = f"{len(boxes)} instances" + (" and a crowd region" if crowd else "")
        if multi == "skip" or crowd:
            why = "; --multi largest cannot rank a crowd region" if crowd and multi == "largest" else (
                "; use --multi largest to keep the largest")
            skips += [Skip(f"{path} (annotation {a.get('id')})", f"{what} of '{name}' in one image: "
                           f"the query '{query}' would be ambiguous{why}") for a, _ in boxes]
            return []
        boxes.sort(key=lambda ab: (-(ab[1][2] - ab[1][0]) * (ab[1][3] - ab[1][1]), str(ab[0].get("id"))))
        skips += [Skip(f"{path} (annotation {a.get('id')})", f"not the largest of {what} of '{name}' (--multi largest)")
                  for a, _ in boxes[1:]]
        boxes, query = boxes[:1], f"the largest {name}"
    ann, box = boxes[0]
    record = {"id": f"{image_id}-{ann.get('id')}", "image": path, "query": query, "bbox": box,
              "width": size[0], "height": size[1], "label": name, **extra}
    return [Item(record, group=str(image_id))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``medloc-data coco``."""
    parser.description = ("Convert COCO detection annotations into grounding records with the query 'the {category}'; "
                          "ambiguous instances (several of one category in an image) are skipped by default.")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder that file_name entries are relative to")
    parser.add_argument("--annotations", required=True, metavar="FILE.json", help="COCO instances JSON")
    parser.add_argument("--multi", choices=("skip", "largest"), default="skip",
                        help="several instances of one category in an image: skip them all (default, reported) "
                             "or keep the largest box with the query 'the largest {name}'")
    add_record_arguments(parser, dataset="coco")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`medloc-data coco`: :func:`convert_coco` with the command-line options."""
    return run_cli(lambda: convert_coco(args.images, args.annotations, args.out, multi=args.multi,
                                        dataset=args.dataset, modality=args.modality, **output_options(args)))
