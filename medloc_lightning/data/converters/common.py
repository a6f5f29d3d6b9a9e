"""Converter plumbing shared by every source: the output folder, seeded grouped splits, skip reports, CLI glue.

A converter is a typed function (``convert_ham10000(images, masks, metadata, out, ...)``). It builds an
:class:`Output` first (which checks ``out`` before any work), then :class:`Item` s (one schema record each,
image path absolute) and :class:`Skip` s (one per thing it could not convert), and returns
``output.write(items, skips)``: a :class:`ConversionReport`. Its CLI subcommand is a thin layer over it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

from medloc_lightning.checkpointing.atomic import write_text
from medloc_lightning.data.images import image_size
from medloc_lightning.data.schema import BBOX_TOLERANCE, check_fields
from medloc_lightning.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
SOURCE_FILE = "medloc-data.json"
"""Written into ``out`` beside the split files: which converter wrote them, from which inputs."""
T = TypeVar("T")
R = TypeVar("R")


class ConversionError(DataError):
    """A fatal input problem (missing folder, unreadable metadata, an ``out`` it must not overwrite): the
    converter writes nothing (`medloc-data` exits 2)."""


class NothingWritten(ConversionError):
    """Skipped items left nothing to write (every item skipped, or any under ``strict``): ``out`` is left as it
    was (`medloc-data` lists the skips and exits 1)."""

    def __init__(self, message: str, skips: Sequence["Skip"], notes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.skips, self.notes = list(skips), list(notes)


@dataclass(frozen=True)
class Skip:
    """Something that could not be converted: where it is and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Item:
    """One converted record plus how to split it: items sharing ``group`` always land in the same split."""

    record: dict[str, Any]
    group: str
    split: str | None = None  # an official split; None = drawn by the seeded split


def add_output_arguments(parser: argparse.ArgumentParser, ratios: bool = True, test_ratio: bool = True) -> None:
    """``--out``, ``--strict``, ``--absolute-paths``, ``--overwrite`` and (when the split is drawn) ``--seed`` and
    the ratios; :func:`output_options` turns them into :class:`Output` keywords."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for train/val/test.jsonl")
    if ratios:
        parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
        parser.add_argument("--val-ratio", type=float, default=0.1, help="fraction of groups for val (default 0.1)")
        if test_ratio:
            parser.add_argument("--test-ratio", type=float, default=0.1,
                                help="fraction of groups for test (default 0.1)")
    parser.add_argument("--strict", action="store_true",
                        help="if anything could not be converted, write nothing and exit 1 (default: skip, report, exit 0)")
    parser.add_argument("--absolute-paths", action="store_true",
                        help="write absolute image paths (default: relative to --out)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace split files in --out that another conversion (or you) wrote (refused by default)")


def output_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`Output` keywords given on the command line (see :func:`add_output_arguments`)."""
    keys = ("seed", "val_ratio", "test_ratio", "strict", "absolute_paths", "overwrite")
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def add_record_arguments(parser: argparse.ArgumentParser, dataset: str | None = None) -> None:
    """Optional ``--dataset`` / ``--modality`` copied into every record."""
    parser.add_argument("--dataset", default=dataset, help=f"dataset name stored in each record (default {dataset})")
    parser.add_argument("--modality", default=None, help="modality stored in each record, e.g. xray (default none)")


def phrase(key: str, templates: Sequence[str], **names: str) -> str:
    """Pick one template by a stable hash of ``key`` (not Python's salted ``hash``) and fill it in."""
    digest = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)
    return templates[digest % len(templates)].format(**names)


def split_groups(groups: Iterable[str], seed: int, val_ratio: float, test_ratio: float) -> dict[str, str]:
    """Map each distinct group to train/val/test: sort, shuffle with ``random.Random(seed)``, cut by ratio.

    Counts are ``round(n * ratio)`` (val capped so train may be empty but never negative), so the split is
    exact and independent of the file system's listing order.
    """
    if val_ratio < 0 or test_ratio < 0 or val_ratio + test_ratio > 1:
        raise ConversionError(f"--val-ratio {val_ratio} and --test-ratio {test_ratio} must be >= 0 and sum to <= 1")
    order = sorted(set(groups))
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = int(n * test_ratio + 0.5)
    n_val = min(int(n * val_ratio + 0.5), n - n_test)
    out = {g: "test" for g in order[:n_test]}
    out.update({g: "val" for g in order[n_test:n_test + n_val]})
    out.update({g: "train" for g in order[n_test + n_val:]})
    return out


def assign_splits(items: Sequence[Item], seed: int = 0, val_ratio: float = 0.0,
                  test_ratio: float = 0.0) -> dict[str, list[dict[str, Any]]]:
    """Records per split, each sorted by id; items without an official split are drawn by group."""
    drawn = split_groups([i.group for i in items if i.split is None], seed, val_ratio, test_ratio)
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLIT_NAMES}
    for item in items:
        splits[item.split or drawn[item.group]].append(item.record)
    for records in splits.values():
        records.sort(key=lambda r: r["id"])
    return splits


def output_image_path(image: str, out_dir: str, absolute: bool = False) -> str:
    """The path to write: relative to ``out_dir`` (may contain ``..``), or absolute if asked or impossible."""
    image = os.path.abspath(image)
    if absolute:
        return image
    try:
        return os.path.relpath(image, os.path.abspath(out_dir))
    except ValueError:  # Windows: another drive has no relative path
        return image


def clip_to_image(box: Sequence[float], width: int, height: int) -> tuple[list[float] | None, str]:
    """``(box clipped to the image, "")`` when it sticks out by at most the schema's tolerance, else ``(None, reason)``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not x1 < x2 or not y1 < y2:
        return None, f"degenerate box {list(box)} (needs x1 < x2 and y1 < y2)"
    tol = BBOX_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        return None, f"box {list(box)} lies outside the {width}x{height} image"
    return [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)], ""


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """Order-preserving thread-pool map for image/mask decoding (PIL and numpy release the GIL)."""
    if len(items) < 8:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def read_image_size(path: str) -> tuple[int, int] | str:
    """The image's ``(width, height)`` from its header, or why it cannot be read (a skip reason)."""
    if not os.path.isfile(path):
        return "image file not found"
    try:
        return image_size(path)
    except Exception as err:  # PIL raises several types for corrupt data
        return f"unreadable image: {err}"


def require_dir(path: str, option: str) -> str:
    """``path`` if it is a folder, else a :class:`ConversionError` naming the option."""
    if not os.path.isdir(path):
        raise ConversionError(f"{option} {path}: not a folder")
    return path


def require_file(path: str, option: str) -> str:
    """``path`` if it is a file, else a :class:`ConversionError` naming the option."""
    if not os.path.isfile(path):
        raise ConversionError(f"{option} {path}: file not found")
    return path


def _check_items(items: Sequence[Item]) -> tuple[list[Item], list[Skip]]:
    """Schema safety net: drop (and report) records that ``validate`` would reject, and repeated ids."""
    kept, skips, seen = [], [], set()
    for item in items:
        problems = check_fields(item.record, "", 0)
        if problems:
            skips.append(Skip(str(item.record.get("image")), "; ".join(f"{p.field}: {p.reason}" for p in problems)))
        elif item.record["id"] in seen:
            skips.append(Skip(item.record["image"], f"duplicate id {item.record['id']!r}"))
        else:
            seen.add(item.record["id"])
            kept.append(item)
    return kept, skips


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """Write records one per line via a unique temporary file in the same folder, renamed over ``path`` at the
    end, so a crash never leaves half a file; a failed write deletes its temporary file."""
    write_text(path, (json.dumps(record, ensure_ascii=False) + "\n" for record in records))


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion wrote: the folder, records per split, what it skipped and why, and notes."""

    out: str
    counts: dict[str, int]
    skips: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Output:
    """Where and how a converter writes: ``out`` plus the options every converter shares.

    Checked on creation, before any conversion work: ``out`` must not hold split files from another source
    (another converter, other inputs, or files no converter wrote) unless ``overwrite``. ``inputs`` (the
    converter's source folders and files) identify the source and are never overwritten.
    """

    out: str | os.PathLike
    converter: str
    inputs: Sequence[str | os.PathLike] = ()
    seed: int = 0
    val_ratio: float = 0.0
    test_ratio: float = 0.0
    strict: bool = False
    absolute_paths: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        out = os.path.abspath(self.out)
        for target in self.targets:
            for source in self.inputs:
                if os.path.exists(target) and os.path.exists(source) and os.path.samefile(target, source):
                    raise ConversionError(f"--out {self.out} would overwrite the input {source}")
        existing = [t for t in self.targets if os.path.exists(t)]
        if not existing or self.overwrite:
            return
        written_by = _read_source(out)
        if written_by is None:
            raise ConversionError(
                f"--out {self.out} already holds {', '.join(os.path.basename(t) for t in existing)} that no converter "
                f"wrote (no {SOURCE_FILE}): refusing to overwrite them; pass --overwrite or choose another folder")
        if written_by != self.source:
            raise ConversionError(
                f"--out {self.out} holds the records of `medloc-data {written_by.get('converter')}` from "
                f"{', '.join(map(str, written_by.get('inputs', [])))}: refusing to overwrite them with another "
                f"source's; pass --overwrite or choose another folder")

    @property
    def targets(self) -> list[str]:
        return [os.path.join(os.path.abspath(self.out), f"{name}.jsonl") for name in SPLIT_NAMES]

    @property
    def source(self) -> dict[str, Any]:
        return {"converter": self.converter, "inputs": [os.path.realpath(p) for p in self.inputs]}

    def write(self, items: Sequence[Item], skips: Sequence[Skip], notes: Sequence[str] = ()) -> ConversionReport:
        """Check, split and write ``train/val/test.jsonl`` (always all three) and the source file.

        Raises :class:`NothingWritten` (``out`` untouched) when nothing is left to write, or under ``strict``
        when anything was skipped.
        """
        items, bad = _check_items(items)
        skips, notes = [*skips, *bad], list(notes)
        if skips and self.strict:
            raise NothingWritten(f"{len(skips)} items could not be converted (listed above); --strict: nothing "
                                 f"written", skips, notes)
        if not items:
            raise NothingWritten(f"nothing to write: every item was skipped ({len(skips)}, listed above); "
                                 f"{self.out} left unchanged", skips, notes)
        splits = assign_splits(items, self.seed, self.val_ratio, self.test_ratio)
        out = os.path.abspath(self.out)
        os.makedirs(out, exist_ok=True)
        outside = 0
        for name, target in zip(SPLIT_NAMES, self.targets):
            rows = [{**r, "image": output_image_path(r["image"], out, self.absolute_paths)} for r in splits[name]]
            outside += sum(os.path.isabs(r["image"]) or r["image"].split(os.sep)[0] == os.pardir for r in rows)
            write_jsonl(target, rows)
        counts = {name: len(splits[name]) for name in SPLIT_NAMES}
        write_jsonl(os.path.join(out, SOURCE_FILE), [{**self.source, "counts": counts}])
        if outside:
            notes.append(f"{outside} image paths lead outside {self.out}: training and `medloc-data validate` refuse "
                         f"them unless allowed (allow_outside_root / --allow-outside-root); an --out that holds the "
                         f"images avoids this")
        return ConversionReport(out, counts, skips, notes)


def _read_source(out: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(out, SOURCE_FILE), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return {"converter": found.get("converter"), "inputs": found.get("inputs")} if isinstance(found, dict) else None


def print_skips(skips: Sequence[Skip], notes: Sequence[str] = ()) -> None:
    """One ``skipped PATH: reason`` line per skip and ``note: ...`` per note, on stderr."""
    for skip in skips:
        print(f"skipped {skip}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def run_cli(convert: Callable[[], ConversionReport]) -> int:
    """A converter subcommand: run it, report skips (stderr) and counts (stdout); 1 when nothing was written.
    Fatal :class:`ConversionError` s propagate (`medloc-data` prints them and exits 2)."""
    try:
        report = convert()
    except NothingWritten as err:
        print_skips(err.skips, err.notes)
        print(f"medloc-data: error: {err}", file=sys.stderr)
        return 1
    print_skips(report.skips, report.notes)
    counts = "  ".join(f"{name}: {n}" for name, n in report.counts.items())
    print(f"wrote {report.out}/{{train,val,test}}.jsonl  {counts}  skipped: {len(report.skips)}")
    return 0
