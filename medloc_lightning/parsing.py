"""Answer parsing: read one box from a model completion, check the answer format, write the canonical answer.

The answer format (what the prompt asks for and `format_answer` writes)::

    <think>free text</think>
    <answer>{"bbox_2d": [x1, y1, x2, y2], "label": "lesion"}</answer>

Coordinates are pixels of the image the model saw (Qwen2.5-VL: the processor-resized image); mapping to
original pixels is `boxes.ImageGeometry`'s job, not this module's.

`parse_box` rules, in order:

1. Where an ``<answer>`` tag exists, only the first ``<answer>...</answer>`` block is searched. An
   ``<answer>`` with no closing tag (a completion cut off at the token limit) runs to the end of the text.
   If that block holds no box the result is None: numbers in ``<think>`` are never used.
2. Otherwise the text after the last ``</think>`` is searched, or the whole text when there is none.
3. The box is the first ``[a, b, c, d]``: a bracketed list of exactly four numbers, whitespace (newlines
   included) allowed around them. Lists of any other length, or holding anything but numbers (nested
   lists, strings, ``nan``), are skipped and the search goes on, so ``{"bbox_2d": [...]}``, a list of
   such objects (first box wins), a bare list and code fences all work.
4. A number is JSON-like: optional ``-`` (no ``+``), digits with an optional decimal part (``.5`` and
   ``5.`` are accepted too), optional exponent (``1e3``). ASCII digits only. If the chosen list holds a
   value that is not finite as a float (``1e999``, or 400 digits), the result is None.

The scanner uses ``str.find`` and anchored, backtracking-free regex matches, each starting where the
previous stopped, so it is linear in the length of the text.
"""
from __future__ import annotations

import json
import math
import re
from typing import Sequence

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "build_prompt",
    "format_answer",
    "has_valid_format",
    "parse_box",
]

DEFAULT_PROMPT_TEMPLATE = (
    "{query} First output the thinking process in <think> </think> tags and then output the final answer "
    "in <answer> </answer> tags. Output the final answer in JSON format."
)
"""VLM-R1's REC question template (om-ai-lab/VLM-R1 QwenModule, "rec"), with ``{query}`` as placeholder."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# Anchored matches only (re.match at a position). Each alternative consumes a disjoint character class
# and every tail is optional, so a match never needs to backtrack into an earlier quantifier.
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_SPACE = re.compile(r"\s*")

Box = tuple[float, float, float, float]


def parse_box(text: object) -> Box | None:
    """The box a completion answers (rules in the module docstring), or None. Never raises."""
    if not isinstance(text, str):
        return None
    start, end = _search_region(text)
    return _first_box(text, start, end)


def _search_region(text: str) -> tuple[int, int]:
    """[start, end) of the part of ``text`` that may hold the answer box."""
    opened = text.find(ANSWER_OPEN)
    if opened >= 0:
        start = opened + len(ANSWER_OPEN)
        closed = text.find(ANSWER_CLOSE, start)
        return start, (closed if closed >= 0 else len(text))
    think_end = text.rfind(THINK_CLOSE)
    return (think_end + len(THINK_CLOSE) if think_end >= 0 else 0), len(text)


def _first_box(text: str, start: int, end: int) -> Box | None:
    """First bracketed list of exactly four numbers in ``text[start:end]``; None if none or non-finite."""
    pos = text.find("[", start, end)
    while pos >= 0:
        values, pos = _read_list(text, pos + 1, end)
        if values is not None and len(values) == 4:
            numbers = tuple(float(v) for v in values)
            return numbers if all(math.isfinite(v) for v in numbers) else None  # type: ignore[return-value]
        pos = text.find("[", pos, end)
    return None


def _read_list(text: str, pos: int, end: int) -> tuple[list[str] | None, int]:
    """Read ``n, n, ...]`` from ``pos`` (just after a ``[``).

    Returns (number tokens, position after ``]``) for a list of numbers, else (None, position where
    reading stopped). Stops after a fifth number: the caller only wants four. Never moves past a ``[``
    it did not consume, so the caller's next ``find('[')`` starts at or before it.
    """
    tokens: list[str] = []
    while True:
        pos = _SPACE.match(text, pos, end).end()  # type: ignore[union-attr]
        number = _NUMBER.match(text, pos, end)
        if number is None:
            return None, pos
        tokens.append(number.group())
        pos = _SPACE.match(text, number.end(), end).end()  # type: ignore[union-attr]
        if pos >= end:
            return None, pos
        if text[pos] == "]":
            return tokens, pos + 1
        if text[pos] != "," or len(tokens) > 4:
            return None, pos
        pos += 1


def has_valid_format(text: object, require_think: bool = True) -> bool:
    """True when ``text`` is exactly ``<think>...</think>`` then ``<answer>...</answer>`` with a box inside.

    Only whitespace may surround the tags (stricter than VLM-R1, whose REC format reward uses
    ``re.search`` and so tolerates leading and trailing text): the format reward should teach the exact
    answer the prompt asks for. Each tag appears once; the think block is optional when
    ``require_think`` is False but must be well formed when present. The box is found as `parse_box`
    finds it, so a bare ``[x1, y1, x2, y2]`` or floats count (VLM-R1 requires a JSON object and ints).
    """
    if not isinstance(text, str):
        return False
    stripped = text.strip()
    has_think = stripped.startswith(THINK_OPEN)
    if require_think and not has_think:
        return False
    think_count = 1 if has_think else 0
    if stripped.count(THINK_OPEN) != think_count or stripped.count(THINK_CLOSE) != think_count:
        return False
    if stripped.count(ANSWER_OPEN) != 1 or stripped.count(ANSWER_CLOSE) != 1:
        return False
    rest = stripped[stripped.index(THINK_CLOSE) + len(THINK_CLOSE):].lstrip() if has_think else stripped
    if not (rest.startswith(ANSWER_OPEN) and rest.endswith(ANSWER_CLOSE)):
        return False
    return _first_box(rest, len(ANSWER_OPEN), len(rest) - len(ANSWER_CLOSE)) is not None


def format_answer(box: Sequence[float], label: str = "lesion", think: str | None = None) -> str:
    """The canonical answer for ``box`` (pixels, rounded half-to-even to int), inverse of `parse_box`.

    ``<think>think</think>`` comes first, on its own line, only when ``think`` is given.
    """
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError) as err:
        raise ValueError(f"format_answer: box must be 4 numbers, got {box!r}") from err
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"format_answer: box must be 4 finite numbers, got {box!r}")
    if not isinstance(label, str):
        raise ValueError(f"format_answer: label must be a str, got {label!r}")
    for name, value in (("label", label), ("think", think)):
        if value is not None and any(tag in value for tag in _TAGS):
            raise ValueError(f"format_answer: {name} must not contain <think>/<answer> tags, got {value!r}")
    x1, y1, x2, y2 = (round(v) for v in values)
    answer = (f'{ANSWER_OPEN}{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], '
              f'"label": {json.dumps(label, ensure_ascii=False)}}}{ANSWER_CLOSE}')
    return answer if think is None else f"{THINK_OPEN}{think}{THINK_CLOSE}\n{answer}"


def build_prompt(query: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The user text for ``query``: ``template`` with ``{query}`` replaced (other braces are left alone)."""
    if not isinstance(query, str):
        raise ValueError(f"build_prompt: query must be a str, got {type(query).__name__}")
    if "{query}" not in template:
        raise ValueError(f"build_prompt: template has no {{query}} placeholder: {template!r}")
    return template.replace("{query}", query)
