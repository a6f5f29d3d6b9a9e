"""`medloc-data vlmr1`: answer parsing, query cleaning, sizes from the image, every bad line reported."""
from __future__ import annotations

import json

import pytest
from datatest_helpers import make_image, read_jsonl, snapshot, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.data.cli import main
from medloc_lightning.data.converters.vlmr1 import clean_query, parse_solution

TEMPLATE = "<image>Please provide the bounding box coordinate of the region this sentence describes: {}."
R1_SUFFIX = (" First output the thinking process in <think> </think> tags and then output the final answer in "
             "<answer> </answer> tags. Output the final answer in JSON format.")

coord = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=150, deadline=None)
@given(st.tuples(coord, coord, coord, coord), st.sampled_from(["{b}", "<answer>{b}</answer>", "<answer> {{\"bbox_2d\": {b}, "
                                                               "\"label\": \"x\"}} </answer>", "see {b} there",
                                                               "<answer>[{{\"bbox_2d\": {b}}}]</answer>"]))
def test_parse_solution_round_trips(box, form):
    text = form.format(b=json.dumps(list(box)))
    assert parse_solution(text) == pytest.approx(box)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_parse_solution_never_raises(text):
    result = parse_solution(text)
    assert result is None or len(result) == 4


@pytest.mark.parametrize("text,query", [
    (TEMPLATE.format("the man in red"), "the man in red"),
    (TEMPLATE.format("the man in red") + R1_SUFFIX, "the man in red"),
    ("<image>\nwhere is the left kidney?", "where is the left kidney?"),
    ("<image> the nodule. Please provide the bounding box coordinate in JSON format.", "the nodule."),
])
def test_clean_query(text, query):
    assert clean_query(text) == query


def _line(i, image, box, caption="the lesion", **kw):
    return {"id": i, "image": image, "conversations": [{"from": "human", "value": TEMPLATE.format(caption)},
                                                        {"from": "gpt", "value": json.dumps(box)}], **kw}


@pytest.fixture
def rec(tmp_path):
    tmp_path = tmp_path / "src"
    make_image(tmp_path / "imgs" / "a.jpg", (100, 80))
    make_image(tmp_path / "imgs" / "b.png", (50, 40))
    lines = [
        _line(1, "a.jpg", [10.5, 20, 60, 70.25], caption="the dark spot"),
        _line(2, "a.jpg", [0, 0, 100.5, 80]),
        _line(3, ["b.png"], [1, 2, 3, 4]),
        "not json",
        _line(5, "missing.png", [1, 2, 3, 4]),
        _line(6, "b.png", [1, 2, 300, 4]),
        _line(7, ["a.jpg", "b.png"], [1, 2, 3, 4]),
        {"id": 8, "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                      {"from": "gpt", "value": "[1,2,3,4]"}]},
        {"id": 9, "image": "a.jpg", "conversations": [{"from": "human", "value": TEMPLATE.format("x")},
                                                      {"from": "gpt", "value": "no box here"}]},
        _line(1, "b.png", [1, 2, 3, 4]),
    ]
    write_jsonl(tmp_path / "rec.jsonl", lines)
    return tmp_path


def test_import_reports_every_bad_line(rec, tmp_path, capsys):
    before = snapshot(rec)
    code = main(["vlmr1", "--jsonl", str(rec / "rec.jsonl"), "--image-root", str(rec / "imgs"), "--out", str(tmp_path / "out"),
                 "--val-ratio", "0", "--test-ratio", "0", "--dataset", "refcoco"])
    assert code == 0
    assert snapshot(rec) == before
    records = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "train.jsonl")}
    assert sorted(records) == ["1", "2", "3"]
    assert records["1"]["query"] == "the dark spot"
    assert records["1"]["bbox"] == [10.5, 20.0, 60.0, 70.25]
    assert (records["1"]["width"], records["1"]["height"]) == (100, 80)
    assert (records["3"]["width"], records["3"]["height"]) == (50, 40)
    assert records["2"]["bbox"] == [0.0, 0.0, 100.0, 80.0]  # within the 1 px tolerance: clipped
    assert records["1"]["dataset"] == "refcoco"
    err = capsys.readouterr().err
    src = rec / "rec.jsonl"
    assert f"{src}:4: invalid JSON" in err
    assert f"{src}:5 ({rec / 'imgs' / 'missing.png'}): image file not found" in err
    assert f"{src}:6: box [1.0, 2.0, 300.0, 4.0] lies outside the 50x40 image" in err
    assert f"{src}:7: 'image' must be one path" in err
    assert f"{src}:8: empty query" in err
    assert f"{src}:9: no [x1, y1, x2, y2] box" in err
    assert "duplicate id '1'" in err


def test_split_option_and_grouping_by_image(rec, tmp_path):
    args = ["vlmr1", "--jsonl", str(rec / "rec.jsonl"), "--image-root", str(rec / "imgs")]
    assert main([*args, "--out", str(tmp_path / "t"), "--split", "test"]) == 0
    assert [len(read_jsonl(tmp_path / "t" / f"{s}.jsonl")) for s in ("train", "val", "test")] == [0, 0, 3]
    assert main([*args, "--out", str(tmp_path / "auto"), "--val-ratio", "0.5", "--test-ratio", "0"]) == 0
    where = {r["id"]: s for s in ("train", "val") for r in read_jsonl(tmp_path / "auto" / f"{s}.jsonl")}
    assert where["1"] == where["2"]  # both captions of a.jpg
    assert where["1"] != where["3"]
