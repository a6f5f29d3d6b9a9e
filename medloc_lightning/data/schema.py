"""The grounding record schema (JSONL, one record per line) and its validation; also `medloc-data validate`.

Every check reports a :class:`Problem` naming the file, the 1-based line and the field, so a bad record is
never dropped without a trace. Training (``GroundingDataModule``) runs exactly these checks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from medloc_lightning.data.images import verify_image

T = TypeVar("T")
REQUIRED_FIELDS = ("id", "image", "query", "bbox", "width", "height")
OPTIONAL_FIELDS = ("dataset", "modality", "label")
EXTRA_FIELDS = ("distractors",)
"""Known fields the trainer does not read (``medloc-data synth`` writes the other structures' boxes)."""
BBOX_TOLERANCE = 1.0  # px a box may stick out of the image (rounding in annotation tools)
MAX_IMAGE_SIDE = 1_000_000
"""Largest accepted ``width``/``height`` in px: far above any real scan (whole-slide images reach ~200k),
so a larger value is a typo or an overflow, caught here rather than as an opaque error downstream."""


@dataclass(frozen=True)
class Problem:
    """One validation finding; renders as ``FILE:LINE: field: reason`` (line 0 = the file as a whole)."""

    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"


@dataclass(frozen=True)
class CheckedRecord:
    """A record that passed the field checks; ``image`` is resolved to a usable path."""

    line: int
    id: str
    image: str
    query: str
    bbox: tuple[float, float, float, float] | None
    """None only in files read with ``require_bbox=False`` (unlabelled records to predict on)."""
    width: int
    height: int
    dataset: str | None = None
    modality: str | None = None
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in schema order (optional keys left out when unset), ``line`` excluded."""
        out: dict[str, Any] = {
            "id": self.id, "image": self.image, "query": self.query,
            "bbox": None if self.bbox is None else list(self.bbox),
            "width": self.width, "height": self.height,
        }
        for key in OPTIONAL_FIELDS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def check_bbox(bbox: Any, width: int | None, height: int | None) -> str | None:
    """Why ``bbox`` is unusable (wrong shape, non-finite, inverted, zero-area, out of bounds), or None.

    Bounds allow :data:`BBOX_TOLERANCE` px on each side and are skipped when width/height are unknown.
    """
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"must be an array of 4 numbers [x1, y1, x2, y2], got {json.dumps(bbox)[:80]}"
    try:
        x1, y1, x2, y2 = (float(v) for v in bbox)
    except OverflowError:
        return f"coordinate too large for a float: {json.dumps(bbox)[:80]}"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return f"non-finite coordinate in {json.dumps(bbox)[:80]}"
    for lo, hi, axis in ((x1, x2, "x"), (y1, y2, "y")):
        if hi < lo:
            return f"inverted box: {axis}2={hi:g} < {axis}1={lo:g}"
        if hi == lo:
            return f"zero-area box: {axis}2 == {axis}1 == {lo:g}"
    tol = BBOX_TOLERANCE
    if x1 < -tol or y1 < -tol:
        return f"box {bbox} starts more than {tol:g} px before the image origin"
    if width is not None and x2 > width + tol:
        return f"x2={x2:g} exceeds the image width {width} by more than {tol:g} px"
    if height is not None and y2 > height + tol:
        return f"y2={y2:g} exceeds the image height {height} by more than {tol:g} px"
    return None


def check_fields(obj: Any, file: str, line: int, require_bbox: bool = True) -> list[Problem]:
    """Schema checks on one parsed JSON value (types, presence, box geometry); no file system access.

    With ``require_bbox=False`` (records to predict on) a missing or null ``bbox`` is allowed; a present one
    is still checked."""
    if not isinstance(obj, dict):
        return [Problem(file, line, "record", f"must be a JSON object, got {_type_name(obj)}")]
    problems: list[Problem] = []

    def bad(field: str, reason: str) -> None:
        problems.append(Problem(file, line, field, reason))

    for key in ("id", "image", "query"):
        if key not in obj:
            bad(key, "missing")
        elif not isinstance(obj[key], str):
            bad(key, f"must be a string, got {_type_name(obj[key])}")
        elif not obj[key].strip():
            bad(key, "must not be empty")
    size: dict[str, int | None] = {}
    for key in ("width", "height"):
        size[key] = None
        if key not in obj:
            bad(key, "missing")
        elif not _is_int(obj[key]):
            bad(key, f"must be an integer, got {_type_name(obj[key])} {json.dumps(obj[key])[:40]}")
        elif not 0 < obj[key] <= MAX_IMAGE_SIDE:
            bad(key, f"must be a size in pixels, 1 to {MAX_IMAGE_SIDE}, got {json.dumps(obj[key])[:40]}")
        else:
            size[key] = obj[key]
    if "bbox" not in obj:
        if require_bbox:
            bad("bbox", "missing")
    elif obj["bbox"] is not None or require_bbox:  # null: allowed only where no box is required
        reason = check_bbox(obj["bbox"], size["width"], size["height"])
        if reason:
            bad("bbox", reason)
    for key in OPTIONAL_FIELDS:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            bad(key, f"must be a string when present, got {_type_name(obj[key])}")
    return problems


def resolve_image(image: str, base_dir: str) -> str:
    """An absolute image path is kept; a relative one is joined to ``base_dir`` (image root or JSONL folder)."""
    return image if os.path.isabs(image) else os.path.normpath(os.path.join(base_dir, image))


class _Root:
    """Whether image paths resolve (symlinks followed) inside a dataset root; folders' real paths are cached."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self._folders: dict[str, str] = {}

    def contains(self, path: str) -> bool:
        folder = os.path.dirname(path)
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        real = os.path.realpath(path) if os.path.islink(path) else os.path.join(self._folders[folder],
                                                                                 os.path.basename(path))
        return os.path.commonpath([self.root, real]) == self.root


def _to_record(obj: dict[str, Any], line: int, path: str) -> CheckedRecord:
    bbox = None if obj.get("bbox") is None else tuple(float(v) for v in obj["bbox"])
    return CheckedRecord(line=line, id=obj["id"], image=path, query=obj["query"],
                  bbox=bbox, width=obj["width"], height=obj["height"],  # type: ignore[arg-type]
                  dataset=obj.get("dataset"), modality=obj.get("modality"), label=obj.get("label"))


def _parse_json(raw: bytes) -> tuple[Any, list[str]]:
    """The JSON value of one line and the keys repeated inside any of its objects."""
    repeated: list[str] = []

    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                repeated.append(key)
            obj[key] = value
        return obj

    return json.loads(raw.rstrip(b"\r\n").decode("utf-8"), object_pairs_hook=pairs_to_dict), repeated


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw.strip():
                yield number, raw


def read_image_checked(path: str, width: int, height: int, file: str, line: int,
                       read: Callable[[str], tuple[T, tuple[int, int]]]) -> tuple[T | None, list[Problem]]:
    """``read(path)`` -> ``(value, (width, height))``, checked against the record: a missing or undecodable file
    or a size other than the declared ``width``/``height`` is a problem. Shared by ``validate`` and the loader,
    so both word problems alike. Returns the value (None when unreadable) and the problems."""
    if not os.path.isfile(path):
        return None, [Problem(file, line, "image", f"file not found: {path}")]
    try:
        value, (real_width, real_height) = read(path)
    except Exception as err:  # PIL raises several types for corrupt data; all mean "unreadable"
        return None, [Problem(file, line, "image", f"cannot decode {path}: {err}")]
    problems = []
    if real_width != width:
        problems.append(Problem(file, line, "width", f"is {width} but {path} is {real_width} px wide"))
    if real_height != height:
        problems.append(Problem(file, line, "height", f"is {height} but {path} is {real_height} px high"))
    return value, problems


def check_image(record: CheckedRecord, file: str) -> list[Problem]:
    """Decode the record's image and compare its real size with ``width``/``height``."""
    return read_image_checked(record.image, record.width, record.height, file, record.line,
                              lambda path: (None, verify_image(path)))[1]


def check_record_images(records: Sequence[CheckedRecord], file: str, workers: int | None = None) -> list[Problem]:
    """:func:`check_image` over many records in a thread pool (PIL decoding releases the GIL)."""
    if not records:
        return []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [p for found in pool.map(lambda r: check_image(r, file), records) for p in found]


def read_records(path: str | os.PathLike, image_root: str | os.PathLike | None = None, check_images: bool = True,
                 max_records: int | None = None, require_bbox: bool = True,
                 allow_outside_root: bool = False) -> tuple[list[CheckedRecord], list[Problem]]:
    """Parse and check a JSONL record file: ``(valid records, problems)``, both in line order.

    ``require_bbox=False`` reads records to predict on, where ``bbox`` may be missing (see `check_fields`).
    Image paths must resolve (symlinks followed) inside the dataset root, ``image_root`` or else the file's
    folder, unless ``allow_outside_root=True``.

    Blank lines are ignored; a file without any record is a problem. A record with any problem (including a
    repeated ``id`` or a key given twice) is left out of the valid list. Unknown keys are ignored with one
    warning per file. ``max_records`` reads only the first N non-blank lines. Raises ``FileNotFoundError``
    if the file itself is missing.
    """
    file = os.fspath(path)
    base_dir = os.path.abspath(image_root if image_root is not None else os.path.dirname(os.path.abspath(file)))
    root = None if allow_outside_root else _Root(base_dir)
    records: list[CheckedRecord] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    warned_unknown = False
    seen_any = False
    for count, (line, raw) in enumerate(_iter_lines(file)):
        seen_any = True
        if max_records is not None and count >= max_records:
            break
        try:
            obj, repeated = _parse_json(raw)
        except UnicodeDecodeError as err:
            problems.append(Problem(file, line, "json", f"not valid UTF-8: {err}"))
            continue
        except json.JSONDecodeError as err:
            reason = f"invalid JSON: {err.msg.removesuffix(' at')} at column {err.colno}"  # msg may end in "at"
            problems.append(Problem(file, line, "json", reason))
            continue
        except RecursionError:
            problems.append(Problem(file, line, "json", "invalid JSON: nested too deeply"))
            continue
        except ValueError as err:  # e.g. an integer literal longer than Python converts
            problems.append(Problem(file, line, "json", f"invalid JSON: {str(err)[:120]}"))
            continue
        found = [Problem(file, line, key, "given twice in this record (JSON would keep only the last value)")
                 for key in dict.fromkeys(repeated)]
        found += check_fields(obj, file, line, require_bbox)
        if isinstance(obj, dict) and not warned_unknown:
            unknown = [k for k in obj if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS + EXTRA_FIELDS]
            if unknown:
                warned_unknown = True
                warnings.warn(f"{file}:{line}: unknown field(s) {', '.join(map(repr, unknown))} ignored (known: "
                              f"{', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}); later unknown fields in this file "
                              f"are not reported", UserWarning, stacklevel=2)
        image = None
        if not found:
            image = resolve_image(obj["image"], base_dir)
            if root is not None and not root.contains(image):
                found.append(Problem(file, line, "image", f"outside the dataset root {root.root}: {obj['image']!r} "
                                                          f"(allow_outside_root / --allow-outside-root permits it)"))
        if not found:
            if obj["id"] in first_line:
                found = [Problem(file, line, "id", f"duplicate id {obj['id']!r} (first at line {first_line[obj['id']]})")]
            else:
                first_line[obj["id"]] = line
        if found:
            problems.extend(found)
        else:
            records.append(_to_record(obj, line, image))  # type: ignore[arg-type]
    if not seen_any:
        problems.append(Problem(file, 0, "file", "holds no records (the file is empty)"))
    if check_images and records:
        image_problems = check_record_images(records, file)
        if image_problems:
            bad_lines = {p.line for p in image_problems}
            records = [r for r in records if r.line not in bad_lines]
            problems = sorted(problems + image_problems, key=lambda p: p.line)
    return records, problems


def validate_records(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                     check_images: bool = True, require_bbox: bool = True,
                     allow_outside_root: bool = False) -> list[Problem]:
    """All problems of a JSONL record file (empty list = valid). A missing file is one problem at line 0."""
    try:
        return read_records(path, image_root=image_root, check_images=check_images, require_bbox=require_bbox,
                            allow_outside_root=allow_outside_root)[1]
    except FileNotFoundError:
        return [Problem(os.fspath(path), 0, "file", "not found")]


def format_problems(problems: Sequence[Problem], limit: int = 20) -> str:
    """The first ``limit`` problems, one per line, plus a count of the rest."""
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


def count_bad_records(problems: Iterable[Problem]) -> int:
    """How many distinct records (lines) the problems touch."""
    return len({(p.file, p.line) for p in problems})


# --- `medloc-data validate` -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``medloc-data validate``."""
    parser.description = ("Check JSONL grounding record files: fields, box geometry, images (decoded in full) and "
                          "their sizes. Prints one FILE:LINE: field: reason line per problem; exit 1 if any.")
    parser.add_argument("files", nargs="+", metavar="FILE.jsonl", help="record files; ids must be unique across all")
    parser.add_argument("--image-root", default=None, metavar="DIR",
                        help="resolve relative image paths against DIR instead of each JSONL file's folder")
    parser.add_argument("--no-images", action="store_true",
                        help="check the metadata only (no image file is opened)")
    parser.add_argument("--unlabelled", action="store_true",
                        help="records to predict on: 'bbox' may be missing or null (checked when present)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept image paths that resolve outside the dataset root (the JSONL folder or "
                             "--image-root), e.g. absolute paths or '..' (refused by default)")


def run(args: argparse.Namespace) -> int:
    """Validate every file; ids repeated across files are reported too (they usually mean split leakage)."""
    total_problems, total_records = 0, 0
    seen: dict[str, tuple[str, int]] = {}
    for file in args.files:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                records, problems = read_records(file, image_root=args.image_root, check_images=not args.no_images,
                                                 require_bbox=not args.unlabelled,
                                                 allow_outside_root=args.allow_outside_root)
        except FileNotFoundError:
            records, problems, caught = [], [Problem(file, 0, "file", "not found")], []
        for warning in caught:
            print(f"warning: {warning.message}")
        n_checked = len(records) + count_bad_records(p for p in problems if p.line > 0)
        for record in records:
            if record.id in seen and seen[record.id][0] != file:
                other = seen[record.id]
                problems.append(Problem(file, record.line, "id", f"duplicate id {record.id!r} (also at {other[0]}:{other[1]})"))
            seen.setdefault(record.id, (file, record.line))
        problems.sort(key=lambda p: p.line)
        for problem in problems:
            print(problem)
        n_bad = count_bad_records(problems)
        print(f"{file}: {n_checked} records checked, {len(problems)} problems in {n_bad} records")
        total_problems += len(problems)
        total_records += n_checked
    if len(args.files) > 1:
        print(f"total: {total_records} records, {total_problems} problems")
    return 1 if total_problems else 0
