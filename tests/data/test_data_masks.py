"""`medloc-data masks`: generic images + masks, stem/suffix matching, largest vs all components."""
from __future__ import annotations

import pytest
from datatest_helpers import make_image, make_mask, read_jsonl, snapshot

from medloc_lightning.data.cli import main
from medloc_lightning.data.converters.masks import mask_key

SIZE = (64, 48)
BLOBS = {  # stem -> rectangles; the largest is listed first
    "heel_a": [(10, 10, 40, 30), (50, 5, 55, 9)],
    "heel_b": [(20, 20, 30, 44), (2, 2, 6, 6), (58, 40, 62, 46)],
    "heel_c": [(5, 6, 25, 16)],
}


@pytest.fixture
def tree(tmp_path):
    tmp_path = tmp_path / "src"
    for i, (stem, rects) in enumerate(BLOBS.items()):
        make_image(tmp_path / "images" / ("sub" if i else "") / f"{stem}.png", SIZE, mode="L", seed=i)
        make_mask(tmp_path / "masks" / f"{stem}_mask.png", SIZE, rects)
    make_image(tmp_path / "images" / "lonely.png", SIZE)
    make_mask(tmp_path / "masks" / "heel_d_mask.png", SIZE, [(1, 1, 3, 3)])
    return tmp_path


def _run(tree, out, *extra):
    return main(["masks", "--images", str(tree / "images"), "--masks", str(tree / "masks"), "--query", "the calcaneus",
                 "--mask-suffix", "_mask", "--out", str(out), "--val-ratio", "0", "--test-ratio", "0", *extra])


def _boxes(out):
    return {r["id"]: tuple(r["bbox"]) for r in read_jsonl(out / "train.jsonl")}


def test_largest_component_is_the_default(tree, tmp_path, capsys):
    before = snapshot(tree)
    assert _run(tree, tmp_path / "out", "--label", "calcaneus", "--modality", "xray") == 0
    assert snapshot(tree) == before
    assert _boxes(tmp_path / "out") == {stem: tuple(map(float, rects[0])) for stem, rects in BLOBS.items()}
    record = read_jsonl(tmp_path / "out" / "train.jsonl")[0]
    assert record["query"] == "the calcaneus" and record["label"] == "calcaneus" and record["modality"] == "xray"
    assert "dataset" not in record
    err = capsys.readouterr().err
    assert "lonely.png: no mask lonely_mask.* under --masks" in err
    assert "heel_d_mask.png: mask without an image" in err
    assert "note: 2 masks have several 8-connected components; boxes use --components largest" in err


def test_all_components_box(tree, tmp_path):
    assert _run(tree, tmp_path / "out", "--components", "all") == 0
    boxes = _boxes(tmp_path / "out")
    assert boxes["heel_a"] == (10.0, 5.0, 55.0, 30.0)
    assert boxes["heel_b"] == (2.0, 2.0, 62.0, 46.0)
    assert boxes["heel_c"] == (5.0, 6.0, 25.0, 16.0)


def test_masks_in_the_images_folder_with_an_extension_suffix(tmp_path):
    make_image(tmp_path / "data" / "x1.jpg", SIZE)
    make_mask(tmp_path / "data" / "x1_seg.png", SIZE, [(4, 4, 9, 9)])
    code = main(["masks", "--images", str(tmp_path / "data"), "--masks", str(tmp_path / "data"), "--query", "the bone",
                 "--mask-suffix", "_seg.png", "--out", str(tmp_path / "out"), "--val-ratio", "0", "--test-ratio", "0"])
    assert code == 0
    assert _boxes(tmp_path / "out") == {"x1": (4.0, 4.0, 9.0, 9.0)}


@pytest.mark.parametrize("name,suffix,key", [("a.png", "", "a"), ("a_mask.png", "_mask", "a"), ("a.png", "_mask", None),
                                             ("a_m.png", "_m.png", "a"), ("a_m.jpg", "_m.png", None)])
def test_mask_key(name, suffix, key):
    assert mask_key(name, suffix) == key


def test_same_folder_needs_a_suffix(tmp_path, capsys):
    make_image(tmp_path / "data" / "x1.jpg", SIZE)
    code = main(["masks", "--images", str(tmp_path / "data"), "--masks", str(tmp_path / "data"), "--query", "q",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "give --mask-suffix" in capsys.readouterr().err


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_typed_function_writes_what_the_command_writes(tree, tmp_path):
    from medloc_lightning.data.converters import convert_masks

    assert _run(tree, tmp_path / "cli") == 0
    report = convert_masks(tree / "images", tree / "masks", "the calcaneus", tmp_path / "api", mask_suffix="_mask",
                           val_ratio=0.0, test_ratio=0.0)
    assert report.counts == {"train": 3, "val": 0, "test": 0} and len(report.skips) == 2
    assert _bytes(tmp_path / "api")["train.jsonl"] == _bytes(tmp_path / "cli")["train.jsonl"]


def test_a_users_files_are_left_byte_identical_by_every_refused_call(tree, tmp_path, capsys):
    mine = tmp_path / "mine"  # the user's own records: no converter wrote them
    mine.mkdir()
    for name in ("train", "val", "test"):
        (mine / f"{name}.jsonl").write_text(f'{{"id": "{name}-mine"}}\n')
    mine_before = _bytes(mine)
    assert _run(tree, mine) == 2  # another source's data in --out
    assert "no converter wrote" in capsys.readouterr().err
    assert _bytes(mine) == mine_before

    good = tmp_path / "good"  # a previous good conversion ...
    assert _run(tree, good) == 0
    before = _bytes(good)
    for name in BLOBS:  # ... then every mask goes empty: every item is skipped
        make_mask(tree / "masks" / f"{name}_mask.png", SIZE, [])
    assert _run(tree, good) == 1
    assert "medloc-data: error: nothing to write: every item was skipped" in capsys.readouterr().err
    assert _bytes(good) == before
    assert _run(tree, mine, "--overwrite") == 1  # the opt-in does not make an empty conversion write either
    assert _bytes(mine) == mine_before
