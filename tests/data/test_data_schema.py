"""Record schema validation: every bad record is named by file, line and field."""
from __future__ import annotations

import math
import os

import pytest
from datatest_helpers import make_image, record, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.data.cli import main
from medloc_lightning.data.schema import Problem, check_bbox, read_records, validate_records


@pytest.fixture
def images(tmp_path):
    make_image(tmp_path / "img" / "a.png", (40, 30))
    make_image(tmp_path / "img" / "b.jpg", (40, 30))
    return tmp_path


def test_problem_renders_file_line_field_reason():
    assert str(Problem("x.jsonl", 7, "bbox", "inverted")) == "x.jsonl:7: bbox: inverted"


def test_valid_file_has_no_problems_and_resolves_paths(images):
    abs_image = str(images / "img" / "b.jpg")
    path = write_jsonl(images / "train.jsonl", [
        record("1", "img/a.png", label="mel", dataset="d", modality="dermoscopy"),
        "",  # blank lines are ignored but still count for line numbers
        record("2", abs_image, bbox=(0.5, 0.25, 40.0, 30.0)),
    ])
    records, problems = read_records(path)
    assert problems == []
    assert [r.line for r in records] == [1, 3]
    assert records[0].image == str(images / "img" / "a.png")
    assert records[1].image == abs_image
    assert records[0].label == "mel" and records[1].label is None
    assert records[1].bbox == (0.5, 0.25, 40.0, 30.0)
    assert validate_records(path) == []


def test_image_root_overrides_the_jsonl_folder(images, tmp_path):
    path = write_jsonl(tmp_path / "meta" / "x.jsonl", [record("1", "a.png")])
    assert [p.field for p in validate_records(path)] == ["image"]
    assert validate_records(path, image_root=images / "img") == []


BAD_LINES = [
    ('{"id": "1", ', "json", "invalid JSON"),
    ('[1, 2]', "record", "must be a JSON object"),
    ({**record("x", "img/a.png"), "id": 5}, "id", "must be a string"),
    ({k: v for k, v in record("x", "img/a.png").items() if k != "query"}, "query", "missing"),
    ({**record("x", "img/a.png"), "query": "  "}, "query", "must not be empty"),
    ({**record("x", "img/a.png"), "width": 40.0}, "width", "must be an integer"),
    ({**record("x", "img/a.png"), "height": True}, "height", "must be an integer"),
    ({**record("x", "img/a.png"), "width": 0}, "width", "must be a size in pixels, 1 to 1000000, got 0"),
    ({**record("x", "img/a.png"), "width": 10 ** 400}, "width", "must be a size in pixels, 1 to 1000000, got 1000"),
    ({**record("x", "img/a.png"), "height": 10 ** 30}, "height", "must be a size in pixels"),
    ({**record("x", "img/a.png"), "bbox": [1, 2, 10 ** 400, 4]}, "bbox", "coordinate too large for a float"),
    ('{"id": "x", "image": "img/a.png", "query": "q", "bbox": [1, 2, 3, 4], "width": 1' + "0" * 5000 + ', "height": 30}',
     "json", "invalid JSON"),
    ('{"id": "x", "image": "img/a.p', "json", "invalid JSON: Unterminated string starting at column 22"),
    ('{"id": "x", "id": "y", "image": "img/a.png", "query": "q", "bbox": [1, 2, 3, 4], "width": 40, "height": 30}',
     "id", "given twice in this record"),
    (record("x", "../../../../../../../../etc/passwd"), "image", "outside the dataset root"),
    (record("x", "/etc/passwd"), "image", "outside the dataset root"),
    ({**record("x", "img/a.png"), "bbox": "1,2,3,4"}, "bbox", "array of 4 numbers"),
    ({**record("x", "img/a.png"), "bbox": [1, 2, 3]}, "bbox", "array of 4 numbers"),
    ('{"id": "x", "image": "img/a.png", "query": "q", "bbox": [1, NaN, 3, 4], "width": 40, "height": 30}',
     "bbox", "non-finite"),
    ({**record("x", "img/a.png"), "bbox": [10, 2, 5, 4]}, "bbox", "inverted"),
    ({**record("x", "img/a.png"), "bbox": [1, 4, 5, 4]}, "bbox", "zero-area"),
    ({**record("x", "img/a.png"), "bbox": [1, 2, 41.5, 4]}, "bbox", "exceeds the image width"),
    ({**record("x", "img/a.png"), "bbox": [1, 2, 4, 31.01]}, "bbox", "exceeds the image height"),
    ({**record("x", "img/a.png"), "bbox": [-1.5, 2, 4, 5]}, "bbox", "before the image origin"),
    ({**record("x", "img/a.png"), "label": 3}, "label", "must be a string"),
    (record("x", "img/missing.png"), "image", "file not found"),
    (record("x", "img/a.png", size=(41, 30)), "width", "40 px wide"),
    (record("x", "img/a.png", size=(40, 31), bbox=(1, 1, 5, 5)), "height", "30 px high"),
]


@pytest.mark.parametrize("line,field,reason", BAD_LINES, ids=[f"{f}-{r}" for _, f, r in BAD_LINES])
def test_each_problem_names_file_line_and_field(images, line, field, reason):
    path = write_jsonl(images / "x.jsonl", [record("ok", "img/a.png"), line])
    problems = validate_records(path)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert (problem.file, problem.line, problem.field) == (str(path), 2, field)
    assert reason in problem.reason
    assert str(problem).startswith(f"{path}:2: {field}: ")


@pytest.mark.parametrize("bad", [{"width": 10 ** 400}, {"bbox": [1, 2, 10 ** 400, 4]}, {"height": 10 ** 30}])
def test_huge_numbers_are_problems_and_the_rest_of_the_file_is_still_checked(images, bad):
    from medloc_lightning.data import GroundingDataModule

    lines = [record("a", "img/a.png"), {**record("b", "img/a.png"), **bad}, record("c", "img/a.png", size=(41, 30))]
    path = write_jsonl(images / "x.jsonl", lines)
    for check_images in (True, False):
        problems = validate_records(path, check_images=check_images)
        assert [p.line for p in problems] == ([2, 3] if check_images else [2])
    with pytest.warns(UserWarning, match="skipping invalid records"):
        dm = GroundingDataModule(train_file=str(path), skip_invalid=True, check_images=False)
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 2 and dm.skipped["train"] == 1


def test_json_errors_say_at_column_once(images):
    path = write_jsonl(images / "x.jsonl", ['{"id": "x", "image": "img/a.p'])
    (problem,) = validate_records(path)
    assert problem.reason == "invalid JSON: Unterminated string starting at column 22"  # not "at at column"


def test_unknown_keys_warn_once_per_file_with_the_line(images):
    lines = [record("a", "img/a.png"), {**record("b", "img/a.png"), "lable": "mel"}, {**record("c", "img/a.png"), "x": 1}]
    path = write_jsonl(images / "x.jsonl", lines)
    with pytest.warns(UserWarning) as caught:
        records, problems = read_records(path)
    messages = [str(w.message) for w in caught if "unknown field" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith(f"{path}:2: unknown field(s) 'lable' ignored")
    assert problems == [] and len(records) == 3


def test_paths_outside_the_dataset_root_need_an_explicit_opt_in(images, tmp_path):
    outside = make_image(tmp_path.parent / f"{tmp_path.name}-outside" / "o.png", (40, 30))
    (images / "img" / "link.png").symlink_to(outside)  # a symlink inside the root that points out of it
    lines = [record("a", "img/a.png"), record("b", str(outside)), record("c", "img/link.png"),
             record("d", f"../{outside.parent.name}/o.png")]
    path = write_jsonl(images / "x.jsonl", lines)
    problems = validate_records(path)
    assert [(p.line, p.field) for p in problems] == [(2, "image"), (3, "image"), (4, "image")]
    assert all(p.reason.startswith(f"outside the dataset root {os.path.realpath(images)}") for p in problems)
    assert validate_records(path, allow_outside_root=True) == []
    assert main(["validate", str(path)]) == 1
    assert main(["validate", "--allow-outside-root", str(path)]) == 0


def test_an_empty_file_is_a_problem_naming_the_file(tmp_path, capsys):
    for content in ("", "\n \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(content)
        assert [str(p) for p in validate_records(path)] == [f"{path}:0: file: holds no records (the file is empty)"]
        assert main(["validate", str(path)]) == 1
        assert f"{path}:0: file: holds no records" in capsys.readouterr().out


def test_box_within_one_pixel_tolerance_is_accepted(images):
    path = write_jsonl(images / "x.jsonl", [record("1", "img/a.png", bbox=(-1, -0.5, 41, 30.9))])
    assert validate_records(path) == []


def test_duplicate_ids_are_reported_with_the_first_line(images):
    path = write_jsonl(images / "x.jsonl", [record("a", "img/a.png"), record("b", "img/a.png"), record("a", "img/b.jpg")])
    records, problems = read_records(path)
    assert [r.id for r in records] == ["a", "b"]
    assert [(p.line, p.field) for p in problems] == [(3, "id")]
    assert "first at line 1" in problems[0].reason


@pytest.mark.parametrize("name", ["t.jpg", "t.png"])
def test_truncated_images_are_caught_by_decoding(images, name):
    good = make_image(images / "img" / name, (64, 48), seed=3)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) * 2 // 3])
    path = write_jsonl(images / "x.jsonl", [record("1", f"img/{name}", size=(64, 48))])
    problems = validate_records(path)
    assert [(p.line, p.field) for p in problems] == [(1, "image")]
    assert "cannot decode" in problems[0].reason
    # the header alone still reads fine: only the full decode catches it
    assert validate_records(path, check_images=False) == []


def test_check_images_false_never_opens_images(images):
    path = write_jsonl(images / "x.jsonl", [record("1", "img/nope.png")])
    assert validate_records(path, check_images=False) == []


def test_missing_file_is_one_problem_at_line_zero(tmp_path):
    problems = validate_records(tmp_path / "nope.jsonl")
    assert [(p.line, p.field, p.reason) for p in problems] == [(0, "file", "not found")]


def test_several_problems_on_one_line_are_all_reported(images):
    path = write_jsonl(images / "x.jsonl", [{"id": 1, "image": "img/a.png", "query": "q", "width": "40", "height": 30}])
    fields = sorted(p.field for p in validate_records(path))
    assert fields == ["bbox", "id", "width"]


def test_max_records_reads_only_the_first_lines(images):
    path = write_jsonl(images / "x.jsonl", [record("a", "img/a.png"), record("b", "img/a.png"), "{bad"])
    records, problems = read_records(path, max_records=2)
    assert [r.id for r in records] == ["a", "b"] and problems == []


finite = st.floats(-60, 100, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(finite, st.just(math.nan), st.just(math.inf)), min_size=4, max_size=4),
       st.integers(1, 80), st.integers(1, 80))
def test_check_bbox_accepts_exactly_the_valid_boxes(box, width, height):
    x1, y1, x2, y2 = box
    valid = (all(math.isfinite(v) for v in box) and x1 < x2 and y1 < y2 and x1 >= -1 and y1 >= -1
             and x2 <= width + 1 and y2 <= height + 1)
    assert (check_bbox(box, width, height) is None) == valid


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=5), st.lists(st.booleans(), min_size=4, max_size=4),
                 st.lists(finite, min_size=0, max_size=6).filter(lambda v: len(v) != 4)))
def test_check_bbox_rejects_malformed_values(value):
    assert check_bbox(value, 50, 50).startswith("must be an array of 4 numbers [x1, y1, x2, y2], got ")


def test_validate_command_prints_problems_and_exits_nonzero(images, capsys):
    bad = write_jsonl(images / "bad.jsonl", [record("a", "img/a.png"), record("b", "img/a.png", bbox=(5, 5, 1, 1))])
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{bad}:2: bbox: inverted")
    assert out[-1] == f"{bad}: 2 records checked, 1 problems in 1 records"


def test_validate_command_passes_clean_files_and_flags_ids_shared_across_files(images, capsys):
    train = write_jsonl(images / "train.jsonl", [record("a", "img/a.png")])
    test = write_jsonl(images / "test.jsonl", [record("b", "img/b.jpg")])
    assert main(["validate", str(train), str(test)]) == 0
    leak = write_jsonl(images / "leak.jsonl", [record("a", "img/b.jpg")])
    capsys.readouterr()
    assert main(["validate", str(train), str(leak)]) == 1
    assert f"{leak}:1: id: duplicate id 'a' (also at {train}:1)" in capsys.readouterr().out


def test_validate_command_image_root_and_no_images(images, tmp_path, capsys):
    path = write_jsonl(tmp_path / "meta" / "x.jsonl", [record("1", "a.png"), record("2", "zzz.png")])
    assert main(["validate", str(path), "--no-images"]) == 0
    assert main(["validate", str(path), "--image-root", os.fspath(images / "img")]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: image: file not found" in out and f"{path}:1:" not in out


def test_validate_unlabelled_allows_a_missing_or_null_box_and_still_checks_a_present_one(images, capsys):
    lines = [record("a", "img/a.png"), record("b", "img/a.png"), record("c", "img/a.png", bbox=(5, 5, 1, 1))]
    del lines[0]["bbox"]
    lines[1]["bbox"] = None
    path = write_jsonl(images / "predict.jsonl", lines)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:1: bbox: missing" in out and f"{path}:2: bbox: must be an array" in out
    assert main(["validate", "--unlabelled", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:3: bbox: inverted") and out[-1] == f"{path}: 3 records checked, 1 problems in 1 records"
    records, problems = read_records(path, require_bbox=False)
    assert [r.bbox for r in records] == [None, None] and [p.line for p in problems] == [3]
    assert records[0].to_dict()["bbox"] is None
