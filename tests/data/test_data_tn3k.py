"""`medloc-data tn3k` on a fake TN3K tree: official test split kept, val carved from trainval, JPEG masks."""
from __future__ import annotations

import json

import pytest
from datatest_helpers import make_image, make_mask, read_jsonl, snapshot

from medloc_lightning.data.cli import main

SIZE = (56, 40)


def rect_for(i):
    return (3 + i % 9, 2 + i % 7, 30 + i % 17, 20 + i % 13)


@pytest.fixture(scope="module")
def tn3k(tmp_path_factory):
    root = tmp_path_factory.mktemp("tn3k")
    for part, n in (("trainval", 10), ("test", 4)):
        for i in range(n):
            make_image(root / f"{part}-image" / f"{i:04d}.jpg", SIZE, mode="L", seed=i)
            make_mask(root / f"{part}-mask" / f"{i:04d}.jpg", SIZE, [rect_for(i)])
    make_image(root / "trainval-image" / "0100.jpg", SIZE, mode="L")  # no mask
    make_mask(root / "test-mask" / "0200.jpg", SIZE, [(1, 1, 5, 5)])  # mask without image
    (root / "tn3k-trainval-fold0.json").write_text(json.dumps({"train": [0, 1, 2, 3, 4, 5, 6, 7], "val": [8, 9, 100]}))
    return root


def _split_ids(out):
    return {s: sorted(r["id"] for r in read_jsonl(out / f"{s}.jsonl")) for s in ("train", "val", "test")}


def test_official_test_kept_and_val_from_trainval(tn3k, tmp_path, capsys):
    before = snapshot(tn3k)
    assert main(["tn3k", "--root", str(tn3k), "--out", str(tmp_path / "out"), "--val-ratio", "0.2"]) == 0
    assert snapshot(tn3k) == before
    ids = _split_ids(tmp_path / "out")
    assert ids["test"] == [f"test-{i:04d}" for i in range(4)]
    assert len(ids["val"]) == 2 and len(ids["train"]) == 8
    assert all(i.startswith("trainval-") for i in ids["train"] + ids["val"])
    for r in read_jsonl(tmp_path / "out" / "train.jsonl"):
        assert r["bbox"] == [float(v) for v in rect_for(int(r["id"][-4:]))]  # JPEG masks, exact boxes
        assert "thyroid" in r["query"] or "nodule" in r["query"]
        assert r["modality"] == "ultrasound" and (r["width"], r["height"]) == SIZE
    err = capsys.readouterr().err
    assert "0100.jpg: no mask 0100.* in trainval-mask/" in err
    assert "0200.jpg: mask without an image in test-image/" in err


def test_seed_changes_val_but_never_test(tn3k, tmp_path):
    runs = []
    for seed in range(4):
        out = tmp_path / str(seed)
        assert main(["tn3k", "--root", str(tn3k), "--out", str(out), "--val-ratio", "0.3", "--seed", str(seed)]) == 0
        runs.append(_split_ids(out))
    assert all(r["test"] == runs[0]["test"] for r in runs)
    assert len({tuple(r["val"]) for r in runs}) > 1


def test_official_fold_file(tn3k, tmp_path, capsys):
    assert main(["tn3k", "--root", str(tn3k), "--out", str(tmp_path / "out"), "--fold", "0"]) == 0
    ids = _split_ids(tmp_path / "out")
    assert ids["val"] == ["trainval-0008", "trainval-0009"]
    assert ids["train"] == [f"trainval-{i:04d}" for i in range(8)]


def test_missing_layout_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "trainval-image").mkdir()
    assert main(["tn3k", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "missing folder(s) trainval-mask, test-image, test-mask" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
