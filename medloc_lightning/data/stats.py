"""`medloc-data stats`: record counts and how small the targets are (box size relative to the image).

Medical targets are often tiny, and a tight IoU threshold is much harder on them; these figures say how
small before training.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any, Sequence

import numpy as np

from medloc_lightning.data.schema import CheckedRecord, count_bad_records, read_records

QUANTILES = (10, 25, 50, 75, 90)
SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2  # COCO's absolute size classes, in px²
NONE_KEY = "(none)"


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """min, p10, p25, p50, p75, p90 (linear interpolation), max and mean; all None when empty."""
    keys = ["min", *(f"p{q}" for q in QUANTILES), "max", "mean"]
    if len(values) == 0:
        return dict.fromkeys(keys)
    a = np.asarray(values, dtype=np.float64)
    numbers = [a.min(), *np.percentile(a, QUANTILES), a.max(), a.mean()]
    return {k: float(v) for k, v in zip(keys, numbers)}


def _counts(values: Sequence[str | None]) -> dict[str, int]:
    counter = Counter(NONE_KEY if v is None else v for v in values)
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def compute_stats(records: Sequence[CheckedRecord]) -> dict[str, Any]:
    """Counts (records, images, per label/dataset/modality), box/image size distributions, COCO size classes."""
    widths = np.array([r.bbox[2] - r.bbox[0] for r in records], dtype=np.float64)
    heights = np.array([r.bbox[3] - r.bbox[1] for r in records], dtype=np.float64)
    image_w = np.array([r.width for r in records], dtype=np.float64)
    image_h = np.array([r.height for r in records], dtype=np.float64)
    area = widths * heights
    return {
        "records": len(records),
        "images": len({r.image for r in records}),
        "per_label": _counts([r.label for r in records]),
        "per_dataset": _counts([r.dataset for r in records]),
        "per_modality": _counts([r.modality for r in records]),
        "area_fraction": distribution(area / (image_w * image_h) if len(records) else []),
        "width_fraction": distribution(widths / image_w if len(records) else []),
        "height_fraction": distribution(heights / image_h if len(records) else []),
        "box_area_px": distribution(area),
        "size_classes": {
            "small": int((area < SMALL_AREA).sum()),
            "medium": int(((area >= SMALL_AREA) & (area < LARGE_AREA)).sum()),
            "large": int((area >= LARGE_AREA).sum()),
        },
    }


def _dist_line(name: str, d: dict[str, float | None], fmt: str) -> str:
    if d["min"] is None:
        return f"{name}: (no records)"
    parts = [f"{k} {format(v, fmt)}" for k, v in d.items() if k != "mean"]
    return f"{name}:  " + "  ".join(parts)


def format_stats(stats: dict[str, Any], title: str = "") -> str:
    """Human-readable report of :func:`compute_stats`."""
    n = stats["records"]
    lines = [f"{title}{': ' if title else ''}{n} records, {stats['images']} images"]
    for key, name in (("per_label", "label"), ("per_dataset", "dataset"), ("per_modality", "modality")):
        counts = stats[key]
        if list(counts) == [NONE_KEY]:
            continue
        lines.append(f"per {name}:")
        width = max(len(k) for k in counts)
        lines += [f"  {k:<{width}}  {v:>7}  ({100 * v / n:.1f}%)" for k, v in counts.items()]
    lines.append(_dist_line("box area / image area", stats["area_fraction"], ".4f"))
    lines.append(_dist_line("box width / image width", stats["width_fraction"], ".3f"))
    lines.append(_dist_line("box height / image height", stats["height_fraction"], ".3f"))
    lines.append(_dist_line("box area (px²)", stats["box_area_px"], ".0f"))
    c = stats["size_classes"]
    share = (lambda k: f"{c[k]} ({100 * c[k] / n:.1f}%)") if n else (lambda k: str(c[k]))
    lines.append(f"COCO size classes: small (<32² px) {share('small')}  medium {share('medium')}  "
                 f"large (>=96² px) {share('large')}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``medloc-data stats``."""
    parser.description = ("Counts per label/dataset/modality and the box-size distribution relative to the image "
                          "(metadata only; images are not opened).")
    parser.add_argument("file", metavar="FILE.jsonl", help="record file")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


def run(args: argparse.Namespace) -> int:
    """Print the statistics of the valid records; invalid ones are listed on stderr and give exit code 1."""
    try:
        records, problems = read_records(args.file, check_images=False)
    except FileNotFoundError:
        print(f"{args.file}:0: file: not found", file=sys.stderr)
        return 1
    stats = compute_stats(records)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        stats["invalid_records"] = count_bad_records(problems)
        print(f"{stats['invalid_records']} invalid records excluded from the statistics (listed above)", file=sys.stderr)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats, title=args.file))
    return 1 if problems else 0
