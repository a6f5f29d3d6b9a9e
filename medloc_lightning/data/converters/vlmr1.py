"""`medloc-data vlmr1`: VLM-R1 REC JSONL (``conversations`` format) -> grounding records.

Input lines look like ``{"id", "image", "conversations": [{"from": "human", "value": "<image>Please provide the
bounding box coordinate of the region this sentence describes: {caption}."}, {"from": "gpt", "value":
"[x1, y1, x2, y2]"}]}`` with the box in original-image pixels (possibly inside ``<answer>`` tags). The query is
the caption; width and height come from the image file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from typing import Any

from medloc_lightning.data.converters.common import (SPLIT_NAMES, ConversionError, ConversionReport, Item, Output,
                                                     Skip, add_output_arguments, add_record_arguments, clip_to_image,
                                                     output_options, read_image_size, require_dir, require_file,
                                                     run_cli)

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")
_PREFIX = re.compile(r"^please provide the bounding box coordinates? of the region (?:that )?this sentence describes\s*:\s*",
                     re.I)
_SUFFIXES = [re.compile(p + r"\s*$", re.I) for p in (
    # VLM-R1's REC question templates, appended after the question
    r"first output the thinking process in <think>\s*</think> tags and then output the final answer in "
    r"<answer>\s*</answer> tags\.?(?:\s*output the final answer in json format\.?)?",
    r"output the thinking process in <think>\s*</think> and final answer \(bounding box coordinates\) in "
    r"<answer>\s*</answer> tags\.?",
    r"please provide the bounding box coordinate in json format\.?",
)]
HUMAN_ROLES = ("human", "user")
MODEL_ROLES = ("gpt", "assistant")


def _box_from_json(value: Any) -> list[float] | None:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (dict, list)):
        value = value[0]
    if isinstance(value, dict):
        value = value.get("bbox_2d", value.get("bbox"))
    if (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return [float(v) for v in value]
    return None


def parse_solution(text: str) -> tuple[float, float, float, float] | None:
    """The box of a VLM-R1 answer: JSON list / ``{"bbox_2d": ...}`` inside the last ``<answer>`` (or the
    whole text), else the first ``[a, b, c, d]`` of numbers in it. None if absent or not finite."""
    answers = _ANSWER.findall(text)
    inner = answers[-1] if answers else text
    try:
        box = _box_from_json(json.loads(inner))
    except (ValueError, RecursionError):
        box = None
    if box is None:
        match = _BOX.search(inner)
        box = [float(v) for v in match.groups()] if match else None
    if box is None or not all(math.isfinite(v) for v in box):
        return None
    return box[0], box[1], box[2], box[3]


def clean_query(text: str) -> str:
    """The referring expression: ``<image>`` tags, VLM-R1's instruction prefix and answer-format suffix removed."""
    text = " ".join(text.replace("<image>", " ").split())
    for suffix in _SUFFIXES:
        text = suffix.sub("", text).strip()
    match = _PREFIX.match(text)
    if match:
        text = text[match.end():].strip()
        if text.endswith("."):  # the template's own closing period
            text = text[:-1].rstrip()
    return text


def _turn(conversations: list[Any], roles: tuple[str, ...]) -> str | None:
    for turn in conversations:
        if isinstance(turn, dict) and str(turn.get("from", turn.get("role", ""))).lower() in roles:
            value = turn.get("value", turn.get("content"))
            return value if isinstance(value, str) else None
    return None


class _Sizes:
    """Image header sizes, read once per file (REC sets repeat each image for many captions)."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[int, int] | str] = {}

    def get(self, path: str) -> tuple[int, int] | str:
        if path not in self.cache:
            self.cache[path] = read_image_size(path)
        return self.cache[path]


def convert_line(obj: Any, where: str, line: int, image_root: str, sizes: _Sizes,
                 extra: dict[str, str]) -> Item | Skip:
    """One parsed JSONL value -> an Item, or a Skip naming ``where`` (FILE:LINE) and the reason."""
    if not isinstance(obj, dict):
        return Skip(where, "line is not a JSON object")
    image = obj.get("image")
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if not isinstance(image, str) or not image:
        return Skip(where, f"'image' must be one path, got {image!r:.80}")
    conversations = obj.get("conversations")
    if not isinstance(conversations, list):
        return Skip(where, "missing 'conversations' list")
    human, answer = _turn(conversations, HUMAN_ROLES), _turn(conversations, MODEL_ROLES)
    if human is None or answer is None:
        return Skip(where, "'conversations' needs a human turn and a gpt turn with string values")
    query = clean_query(human)
    if not query:
        return Skip(where, "empty query once the <image> tag and instructions are removed")
    box = parse_solution(answer)
    if box is None:
        return Skip(where, f"no [x1, y1, x2, y2] box in the answer {answer!r:.80}")
    path = image if os.path.isabs(image) else os.path.join(image_root, image)
    size = sizes.get(path)
    if isinstance(size, str):
        return Skip(f"{where} ({path})", size)
    clipped, reason = clip_to_image(box, *size)
    if clipped is None:
        return Skip(where, reason)
    record_id = str(obj["id"]) if obj.get("id") is not None else f"line{line}"
    record = {"id": record_id, "image": path, "query": query, "bbox": clipped, "width": size[0], "height": size[1]}
    record.update({k: v for k, v in extra.items() if v})
    return Item(record, group=os.path.abspath(path))


def convert_vlmr1(jsonl: str | os.PathLike, image_root: str | os.PathLike, out: str | os.PathLike, *,
                  split: str = "auto", dataset: str | None = None, modality: str | None = None, seed: int = 0,
                  val_ratio: float = 0.1, test_ratio: float = 0.1, strict: bool = False,
                  absolute_paths: bool = False, overwrite: bool = False) -> ConversionReport:
    """Import VLM-R1 REC JSONL (``conversations`` format, boxes in original pixels; image paths relative to
    ``image_root``) into ``out/{train,val,test}.jsonl``. ``split`` puts every record into one split, or draws a
    seeded split by image (``"auto"``), so the captions of one image share a split.

    Raises :class:`ConversionError` on unusable inputs and :class:`NothingWritten` when nothing is left to write.
    """
    if split not in ("auto", *SPLIT_NAMES):
        raise ConversionError(f"split must be 'auto' or one of {SPLIT_NAMES}, got {split!r}")
    jsonl = os.fspath(jsonl)
    output = Output(out, "vlmr1", [jsonl, image_root], seed=seed, val_ratio=val_ratio, test_ratio=test_ratio,
                    strict=strict, absolute_paths=absolute_paths, overwrite=overwrite)
    root = require_dir(os.fspath(image_root), "--image-root")
    sizes = _Sizes()
    items, skips = [], []
    extra = {"dataset": dataset, "modality": modality}
    with open(require_file(jsonl, "--jsonl"), "rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{jsonl}:{line}"
            try:
                obj = json.loads(raw.decode("utf-8-sig" if line == 1 else "utf-8"))
            except ValueError as err:
                skips.append(Skip(where, f"invalid JSON: {err}"))
                continue
            result = convert_line(obj, where, line, root, sizes, extra)
            (items if isinstance(result, Item) else skips).append(result)
    if split != "auto":
        for item in items:
            item.split = split
    return output.write(items, skips)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``medloc-data vlmr1``."""
    parser.description = "Import VLM-R1 REC JSONL (conversations format, boxes in original pixels) as grounding records."
    parser.add_argument("--jsonl", required=True, metavar="FILE", help="VLM-R1 REC JSONL file")
    parser.add_argument("--image-root", required=True, metavar="DIR", help="folder the 'image' paths are relative to")
    parser.add_argument("--split", choices=("auto", *SPLIT_NAMES), default="auto",
                        help="put every record into one split, or draw a seeded split by image (auto, default)")
    add_record_arguments(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`medloc-data vlmr1`: :func:`convert_vlmr1` with the command-line options."""
    return run_cli(lambda: convert_vlmr1(args.jsonl, args.image_root, args.out, split=args.split, dataset=args.dataset,
                                         modality=args.modality, **output_options(args)))
