"""Shared converter plumbing: seeded grouped splits, path writing, the skip report, --strict, and an --out that is
never overwritten by accident."""
from __future__ import annotations

import os
import random
import stat

import pytest
from datatest_helpers import make_image, read_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.data.converters.common import (ConversionError, Item, NothingWritten, Output, Skip, assign_splits,
                                                     clip_to_image, output_image_path, phrase, read_image_size, run_cli,
                                                     split_groups, write_jsonl)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=40, unique=True), st.integers(0, 5),
       st.sampled_from([0.0, 0.1, 0.25, 0.5]), st.sampled_from([0.0, 0.1, 0.3]))
def test_split_groups_is_exact_deterministic_and_order_free(groups, seed, val, test):
    out = split_groups(groups, seed, val, test)
    n = len(groups)
    counts = {s: sum(v == s for v in out.values()) for s in ("train", "val", "test")}
    assert counts["test"] == int(n * test + 0.5)
    assert counts["val"] == min(int(n * val + 0.5), n - counts["test"])
    assert counts["train"] == n - counts["val"] - counts["test"]
    shuffled = list(groups)
    random.Random(99).shuffle(shuffled)
    assert split_groups(shuffled, seed, val, test) == out


def test_split_groups_depends_on_the_seed():
    groups = [f"g{i}" for i in range(50)]
    assert split_groups(groups, 0, 0.2, 0.2) != split_groups(groups, 1, 0.2, 0.2)


@pytest.mark.parametrize("val,test", [(-0.1, 0.1), (0.6, 0.5)])
def test_bad_ratios_are_an_error(val, test):
    with pytest.raises(ConversionError):
        split_groups(["a"], 0, val, test)


def test_assign_splits_keeps_groups_together_and_official_splits():
    items = [Item({"id": f"{g}{k}"}, group=g) for g in "abcdefghij" for k in range(3)]
    items.append(Item({"id": "official"}, group="z", split="test"))
    splits = assign_splits(items, seed=3, val_ratio=0.2, test_ratio=0.2)
    where = {r["id"]: name for name, records in splits.items() for r in records}
    for g in "abcdefghij":
        assert len({where[f"{g}{k}"] for k in range(3)}) == 1
    assert where["official"] == "test"
    assert all(records == sorted(records, key=lambda r: r["id"]) for records in splits.values())


def test_output_image_path_is_relative_to_out(tmp_path):
    image = tmp_path / "src" / "a.png"
    assert output_image_path(str(image), str(tmp_path / "out")) == os.path.join("..", "src", "a.png")
    assert output_image_path(str(image), str(tmp_path / "out"), absolute=True) == str(image)


def test_clip_to_image():
    assert clip_to_image((-0.5, 0, 10.8, 5), 10, 5) == ([0.0, 0.0, 10.0, 5.0], "")
    assert clip_to_image((0, 0, 12, 5), 10, 5)[0] is None
    assert clip_to_image((3, 0, 3, 5), 10, 5)[0] is None


def test_phrase_is_stable_and_varied():
    templates = ("a {x}", "b {x}", "c {x}")
    assert phrase("key", templates, x="1") == phrase("key", templates, x="1")
    assert len({phrase(f"k{i}", templates, x="1") for i in range(30)}) == 3


def _output(out, **kw):
    return Output(out, "test", [], **kw)


def _item(tmp_path, rid, **kw):
    image = make_image(tmp_path / "src" / f"{rid}.png", (10, 10))
    rec = {"id": rid, "image": str(image), "query": "the x", "bbox": [1.0, 1.0, 5.0, 5.0], "width": 10, "height": 10}
    rec.update(kw)
    return Item(rec, group=rid)


def test_write_writes_all_three_files_even_when_empty(tmp_path, capsys):
    out = tmp_path / "out"
    report = _output(out).write([_item(tmp_path, "a")], [])
    assert report.counts == {"train": 1, "val": 0, "test": 0} and report.skips == []
    assert [len(read_jsonl(out / f"{s}.jsonl")) for s in ("train", "val", "test")] == [1, 0, 0]
    assert read_jsonl(out / "train.jsonl")[0]["image"] == os.path.join("..", "src", "a.png")
    assert any("image paths lead outside" in note for note in report.notes)
    assert run_cli(lambda: report) == 0
    assert "train: 1  val: 0  test: 0  skipped: 0" in capsys.readouterr().out


def test_write_reports_skips_and_strict_writes_nothing(tmp_path, capsys):
    items = [_item(tmp_path, "a"), _item(tmp_path, "a"), _item(tmp_path, "b", bbox=[5.0, 1.0, 2.0, 3.0])]
    skips = [Skip("/data/x.png", "no mask")]
    assert run_cli(lambda: _output(tmp_path / "strict", strict=True).write(items, skips)) == 1
    assert not (tmp_path / "strict").exists()
    err = capsys.readouterr().err
    assert "skipped /data/x.png: no mask" in err
    assert "duplicate id 'a'" in err and "bbox: inverted box" in err
    assert "medloc-data: error: 3 items could not be converted (listed above); --strict: nothing written" in err
    report = _output(tmp_path / "lax").write(items, skips)
    assert [r["id"] for r in read_jsonl(tmp_path / "lax" / "train.jsonl")] == ["a"] and len(report.skips) == 3


def test_output_refuses_to_overwrite_an_input(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    source = out / "train.jsonl"
    source.write_text("{}\n")
    with pytest.raises(ConversionError, match="would overwrite the input"):
        Output(out, "test", [str(source)])
    assert source.read_text() == "{}\n"


def _users_records(out):
    out.mkdir(parents=True)
    for name in ("train", "val", "test"):
        (out / f"{name}.jsonl").write_text(f'{{"id": "{name}-good"}}\n')
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_nothing_to_write_leaves_a_previous_output_alone(tmp_path, capsys):
    out = tmp_path / "out"
    _output(out).write([_item(tmp_path, "a")], [])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(NothingWritten, match="every item was skipped"):
        _output(out).write([], [Skip("/data/x.png", "empty mask")])
    assert run_cli(lambda: _output(out).write([_item(tmp_path, "b", bbox=[5.0, 1.0, 2.0, 3.0])], [])) == 1
    assert "skipped" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_out_holding_another_sources_records_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    before = _users_records(out)  # written by hand: no medloc-data.json
    with pytest.raises(ConversionError, match="that no converter wrote .*refusing to overwrite them"):
        _output(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _output(out, overwrite=True).write([_item(tmp_path, "a")], [])
    Output(out, "test", []).write([_item(tmp_path, "a")], [])  # the same source again: replaced
    with pytest.raises(ConversionError, match="holds the records of `medloc-data test`"):
        Output(out, "coco", [])  # another converter
    with pytest.raises(ConversionError, match="holds the records of `medloc-data test`"):
        Output(out, "test", [str(tmp_path / "src")])  # other inputs


def test_write_jsonl_leaves_no_temporary_file_and_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "train.jsonl"
    write_jsonl(str(target), [{"id": "a"}])
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()  # as open(path, "w") would give
    (tmp_path / "train.jsonl.tmp").write_text("a user's file")  # a name a fixed temporary would write over
    with pytest.raises(TypeError):
        write_jsonl(str(target), [{"id": "b"}, {"id": {"not", "json"}}])  # fails half-way
    assert target.read_text() == '{"id": "a"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl", "train.jsonl.tmp"]
    assert (tmp_path / "train.jsonl.tmp").read_text() == "a user's file"
    write_jsonl(str(target), [{"id": "c"}])
    assert read_jsonl(target) == [{"id": "c"}] and (tmp_path / "train.jsonl.tmp").read_text() == "a user's file"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_read_image_size_gives_the_size_or_the_reason_every_converter_reports(tmp_path):
    make_image(tmp_path / "ok.png", (24, 16))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert read_image_size(str(tmp_path / "ok.png")) == (24, 16)
    assert read_image_size(str(tmp_path / "missing.png")) == "image file not found"
    assert read_image_size(str(tmp_path / "bad.png")).startswith("unreadable image: ")
