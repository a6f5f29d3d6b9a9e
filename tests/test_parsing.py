"""Answer parsing: the search rules, adversarial inputs, round trips of formatted boxes, the format check."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.parsing import (
    DEFAULT_PROMPT_TEMPLATE,
    build_prompt,
    format_answer,
    has_valid_format,
    parse_box,
)

OBJ = '{"bbox_2d": [10, 20, 30, 40], "label": "nodule"}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the canonical answer, and numbers in <think> are never used
        (f"<think>maybe [1, 2, 3, 4]</think><answer>{OBJ}</answer>", (10, 20, 30, 40)),
        ("<think>it is at [1, 2, 3, 4]</think><answer>no idea</answer>", None),
        ("<think>[1, 2, 3, 4]</think><answer></answer> [5, 6, 7, 8]", None),
        # only the first answer block counts
        ("<answer>none</answer><answer>[1, 2, 3, 4]</answer>", None),
        ("<answer>[1, 2, 3, 4]</answer><answer>[5, 6, 7, 8]</answer>", (1, 2, 3, 4)),
        # a truncated answer block runs to the end of the text
        ("<think>x</think><answer>[1, 2, 3, 4] and then the model ran ou", (1, 2, 3, 4)),
        ("<answer>[1, 2, 3, 4", None),
        # no answer tag: after the last </think>, else the whole text
        ("<think>[1, 2, 3, 4]</think> so [5, 6, 7, 8]", (5, 6, 7, 8)),
        ("<think>[1, 2, 3, 4]</think> no box here", None),
        ("a</think>[1, 2, 3, 4]</think>[5, 6, 7, 8]", (5, 6, 7, 8)),
        ("The box is [1.5, -2, 3e1, 4].", (1.5, -2, 30, 4)),
        # JSON shapes Qwen2.5-VL produces
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}]', (1, 2, 3, 4)),
        ('```json\n[\n  {"bbox_2d": [\n    11,\n    22 ,33,\t44\n  ], "label": "a"}\n]\n```', (11, 22, 33, 44)),
        ("[[1, 2, 3, 4]]", (1, 2, 3, 4)),
        ("[ 1 , 2 , 3 , 4 ]", (1, 2, 3, 4)),
        ("[.5, 5., 1.25, -0.75]", (0.5, 5.0, 1.25, -0.75)),
        # wrong lengths and non-numbers are skipped
        ("[1, 2, 3] [1, 2, 3, 4, 5] [9, 8, 7, 6]", (9, 8, 7, 6)),
        ("[nan, 1, 2, 3] [inf, 1, 2, 3] [1, 2, 3, 4]", (1, 2, 3, 4)),
        ('["1", 2, 3, 4] [1, 2, 3, 4,] [+1, 2, 3, 4]', None),
        ("[1, 2, 3, 4, [5, 6, 7, 8]]", (5, 6, 7, 8)),
        ("[\u0661, \u0662, \u0663, \u0664]", None),  # non-ASCII digits are not numbers
        # non-finite values make the chosen box None (no fall-through to later boxes)
        ("[1e999, 1, 2, 3] [1, 2, 3, 4]", None),
        ("[" + "9" * 400 + ", 1, 2, 3]", None),
        ("", None),
        ("no numbers at all", None),
    ],
)
def test_parse_box_rules(text: str, expected: tuple[float, ...] | None) -> None:
    got = parse_box(text)
    assert got == (None if expected is None else tuple(float(v) for v in expected))
    if got is not None:
        assert all(type(v) is float for v in got)


@pytest.mark.parametrize("value", [None, 123, 1.5, b"[1, 2, 3, 4]", ["[1, 2, 3, 4]"], {"bbox": [1, 2, 3, 4]}])
def test_parse_box_non_string_is_none(value: object) -> None:
    assert parse_box(value) is None


@pytest.mark.parametrize(
    ("junk", "expected"),
    [
        ("[1,1,1," * 20000, None),
        ("<answer>" * 5000, None),
        ("-" * 50000, None),
        ("[" * 50000, None),
        ("[-" * 30000, None),
        ("1" * 100000, None),
        ("[" + "1" * 100000 + "]", None),
        ("[1, 2, 3, 4" + ", 1" * 30000 + "]", None),
        ("[" + "1." * 50000, None),
        ("[1e" * 30000, None),
        ("[1, 2, 3," + " " * 100000, None),
        ("</think>" * 10000, None),
        ("<answer>" + "[1,1,1," * 15000 + "</answer>", None),
        ("[" * 50000 + "1, 2, 3, 4]", (1.0, 2.0, 3.0, 4.0)),
        ("[1, 2, 3]" * 10000 + "[1, 2, 3, 4]", (1.0, 2.0, 3.0, 4.0)),
    ],
)
def test_parse_box_adversarial_inputs_finish(junk: str, expected: tuple[float, ...] | None) -> None:
    # Quadratic or exponential behaviour would make these 10k-100k character inputs take minutes.
    assert parse_box(junk) == expected
    assert has_valid_format(junk) is False


special_fragments = st.sampled_from(
    ["[", "]", ",", " ", "\n", "-", ".", "e", "1", "23", "4.5", "nan", "{", "}", '"bbox_2d": ',
     "<think>", "</think>", "<answer>", "</answer>", "<", ">", "```json"]
)


@settings(deadline=None, max_examples=300)
@given(st.one_of(st.text(), st.lists(special_fragments, max_size=60).map("".join)))
def test_parse_box_and_format_check_never_raise(text: str) -> None:
    box = parse_box(text)
    assert box is None or (len(box) == 4 and all(isinstance(v, float) for v in box))
    assert has_valid_format(text) in (True, False)
    assert has_valid_format(text, require_think=False) in (True, False)
    if has_valid_format(text):
        assert parse_box(text) is not None


# Junk that cannot open a list or a tag.
junk = st.text(alphabet=st.characters(blacklist_characters="[<", blacklist_categories=("Cs",)), max_size=40)
ints = st.integers(-10**6, 10**6)
floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
spaces = st.sampled_from(["", " ", "  ", "\n", "\n  ", "\t"])


@settings(deadline=None)
@given(st.lists(ints, min_size=4, max_size=4), junk, junk, st.text(max_size=20), st.booleans())
def test_format_answer_parses_back(box: list[int], before: str, after: str, label: str, think: bool) -> None:
    label = label.replace("<", "")
    text = format_answer(box, label=label, think="I see it at [0, 0, 1, 1]." if think else None)
    assert parse_box(before + text + after) == tuple(float(v) for v in box)
    assert has_valid_format(text, require_think=think)
    payload = json.loads(text[text.index("<answer>") + 8: text.index("</answer>")])
    assert payload == {"bbox_2d": box, "label": label}


@settings(deadline=None)
@given(st.lists(floats, min_size=4, max_size=4), junk, junk, st.lists(spaces, min_size=8, max_size=8),
       st.sampled_from(["bare", "object", "list", "fence"]))
def test_any_layout_of_a_box_parses_back(
    box: list[float], before: str, after: str, ws: list[str], layout: str
) -> None:
    body = "[" + ",".join(f"{ws[2 * i]}{v!r}{ws[2 * i + 1]}" for i, v in enumerate(box)) + "]"
    if layout == "object":
        body = f'{{"bbox_2d": {body}, "label": "x"}}'
    elif layout == "list":
        body = f'[{{"bbox_2d": {body}, "label": "x"}}, {{"bbox_2d": [1, 2, 3, 4]}}]'
    elif layout == "fence":
        body = f"```json\n{body}\n```"
    assert parse_box(before + body + after) == tuple(box)
    assert parse_box(f"<think>[9, 9, 9, 9]</think><answer>{before}{body}{after}</answer>") == tuple(box)


def test_format_answer_canonical_text_and_rounding() -> None:
    assert format_answer((10.4, 20.6, 2.5, 3.5)) == '<answer>{"bbox_2d": [10, 21, 2, 4], "label": "lesion"}</answer>'
    assert format_answer([1, 2, 3, 4], label='a "b"', think="t") == (
        '<think>t</think>\n<answer>{"bbox_2d": [1, 2, 3, 4], "label": "a \\"b\\""}</answer>')


@pytest.mark.parametrize(
    "kwargs",
    [dict(box=(1, 2, 3)), dict(box=(1, 2, 3, float("nan"))), dict(box=(1, 2, 3, float("inf"))), dict(box="abcd"),
     dict(box=(1, 2, 3, 4), label="</answer>"), dict(box=(1, 2, 3, 4), think="a</think>b"),
     dict(box=(1, 2, 3, 4), label=5)],
)
def test_format_answer_rejects_bad_input(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        format_answer(**kwargs)


@pytest.mark.parametrize(
    ("text", "with_think", "without_think"),
    [
        (f"<think>x</think><answer>{OBJ}</answer>", True, True),
        (f"  \n<think>\nreasoning\n</think>\n\n<answer>\n{OBJ}\n</answer>\n", True, True),
        ("<think>x</think><answer>[1.5, 2, 3, 4]</answer>", True, True),
        (f"<answer>{OBJ}</answer>", False, True),
        (f"Sure! <think>x</think><answer>{OBJ}</answer>", False, False),  # leading text
        (f"<think>x</think><answer>{OBJ}</answer> done", False, False),  # trailing text
        (f"<think>x</think> and <answer>{OBJ}</answer>", False, False),  # text between blocks
        ("<think>x</think><answer>no box</answer>", False, False),
        ("<think>x</think><answer>[1, 2, 3]</answer>", False, False),
        (f"<think>x<answer>{OBJ}</answer>", False, False),  # think never closed
        (f"<answer>{OBJ}</answer><think>x</think>", False, False),  # wrong order
        (f"<think>x</think><answer>{OBJ}</answer><answer>{OBJ}</answer>", False, False),
        (f"<think>a</think><think>b</think><answer>{OBJ}</answer>", False, False),
        (f"<think>x</think><answer>{OBJ}", False, False),  # truncated
        ("", False, False),
    ],
)
def test_has_valid_format(text: str, with_think: bool, without_think: bool) -> None:
    assert has_valid_format(text) is with_think
    assert has_valid_format(text, require_think=True) is with_think
    assert has_valid_format(text, require_think=False) is without_think


def test_has_valid_format_non_string() -> None:
    assert has_valid_format(None) is False  # type: ignore[arg-type]
    assert has_valid_format(b"<answer>[1,2,3,4]</answer>", require_think=False) is False  # type: ignore[arg-type]


def test_prompt_template_is_vlm_r1s() -> None:
    # om-ai-lab/VLM-R1 QwenModule.get_question_template("rec"), with {Question} renamed to {query}
    assert DEFAULT_PROMPT_TEMPLATE == (
        "{query} First output the thinking process in <think> </think> tags and then output the final answer in "
        "<answer> </answer> tags. Output the final answer in JSON format.")
    prompt = build_prompt("the {odd} nodule")
    assert prompt.startswith("the {odd} nodule First output the thinking process")
    assert build_prompt("q", "Find {query}: {json}") == "Find q: {json}"
    with pytest.raises(ValueError, match="placeholder"):
        build_prompt("q", "no placeholder")
    with pytest.raises(ValueError, match="query"):
        build_prompt(None)  # type: ignore[arg-type]
