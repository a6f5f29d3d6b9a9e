"""`medloc-data ham10000` on a fake HAM10000 tree: exact boxes, lesion-grouped splits, reports, untouched source."""
from __future__ import annotations

import pytest
from datatest_helpers import make_image, make_mask, read_jsonl, snapshot

from medloc_lightning.data.cli import main
from medloc_lightning.data.schema import validate_records

WORDS = {"akiec": "actinic keratosis", "bcc": "basal cell carcinoma", "bkl": "benign keratosis-like lesion",
         "df": "dermatofibroma", "mel": "melanoma", "nv": "melanocytic nevus", "vasc": "vascular lesion"}
SIZE = (48, 36)


@pytest.fixture(scope="module")
def ham(tmp_path_factory):
    """12 lesions with 1-3 images each, images split over two folders (one nested), plus broken cases."""
    root = tmp_path_factory.mktemp("ham")
    codes = list(WORDS)
    rows, expected = [], {}
    n = 0
    for lesion in range(12):
        for _ in range(1 + lesion % 3):
            n += 1
            image_id = f"ISIC_{n:07d}"
            folder = root / ("part_1" if n % 2 else "part_2/nested")
            make_image(folder / f"{image_id}.jpg", SIZE, seed=n)
            rect = (n % 7, n % 5, 20 + n % 11, 15 + n % 13)
            rects = [rect] if n != 4 else [rect, (40, 30, 44, 33)]  # two blobs: the box covers both
            make_mask(root / "masks" / f"{image_id}_segmentation.png", SIZE, rects)
            expected[image_id] = (rect if n != 4 else (rect[0], rect[1], 44, 33), f"HAM_{lesion:07d}", codes[n % 7])
            rows.append(f"HAM_{lesion:07d},{image_id},{codes[n % 7]},histo,45.0,male,back")
    make_image(root / "part_1" / "ISIC_0000090.jpg", SIZE)  # no mask
    make_image(root / "part_1" / "ISIC_0000091.jpg", SIZE)  # empty mask
    make_mask(root / "masks" / "ISIC_0000091_segmentation.png", SIZE)
    make_image(root / "part_1" / "ISIC_0000092.jpg", SIZE)  # not in the metadata
    rows += ["HAM_0000090,ISIC_0000090,nv,histo,1,male,back", "HAM_0000091,ISIC_0000091,nv,histo,1,male,back",
             "HAM_0000093,ISIC_0000093,mel,histo,1,male,back",  # no image
             "HAM_0000094,ISIC_0000001,zzz,histo,1,male,back"]  # unknown dx (and a repeated image id)
    (root / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n" + "\n".join(rows) + "\n")
    return root, expected


def _convert(root, out, *extra):
    return main(["ham10000", "--images", str(root / "part_1"), "--images", str(root / "part_2"),
                 "--masks", str(root / "masks"), "--metadata", str(root / "HAM10000_metadata.csv"),
                 "--out", str(out), "--val-ratio", "0.25", "--test-ratio", "0.25", *extra])


def _all_records(out):
    return {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "val", "test")}


def test_boxes_queries_labels_and_report(ham, tmp_path, capsys):
    root, expected = ham
    before = snapshot(root)
    assert _convert(root, tmp_path / "out") == 0
    assert snapshot(root) == before
    captured = capsys.readouterr()
    splits = _all_records(tmp_path / "out")
    records = [r for rs in splits.values() for r in rs]
    assert sorted(r["id"] for r in records) == sorted(expected)
    for r in records:
        box, _, dx = expected[r["id"]]
        assert r["bbox"] == [float(v) for v in box]
        assert (r["width"], r["height"]) == SIZE
        assert r["label"] == dx and r["dataset"] == "ham10000" and r["modality"] == "dermoscopy"
        assert r["query"].startswith("the ") and WORDS[dx] in r["query"]
    assert len({r["query"].replace(WORDS[r["label"]], "{}") for r in records}) > 1  # phrasing varies
    err = captured.err
    assert "ISIC_0000090.jpg: no mask ISIC_0000090_segmentation.png" in err
    assert "ISIC_0000091_segmentation.png: empty mask" in err
    assert "ISIC_0000092.jpg: image not listed in the metadata CSV" in err
    assert "no image ISIC_0000093.jpg" in err
    assert "unknown dx code 'zzz'" in err
    assert f"train: {len(splits['train'])}  val: {len(splits['val'])}  test: {len(splits['test'])}  skipped: 5" \
        in captured.out
    for name in ("train", "val", "test"):
        assert validate_records(tmp_path / "out" / f"{name}.jsonl", allow_outside_root=True) == []  # images: ../ham


def test_split_is_grouped_by_lesion_and_deterministic(ham, tmp_path):
    root, expected = ham
    assert _convert(root, tmp_path / "a") == 0 and _convert(root, tmp_path / "b") == 0
    for name in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    where = {r["id"]: s for s, rs in _all_records(tmp_path / "a").items() for r in rs}
    lesions = {}
    for image_id, (_, lesion, _) in expected.items():
        lesions.setdefault(lesion, set()).add(where[image_id])
    assert all(len(splits) == 1 for splits in lesions.values())
    per_split = [sum(s == {name} for s in lesions.values()) for name in ("train", "val", "test")]
    assert per_split == [6, 3, 3]
    assert _convert(root, tmp_path / "c", "--seed", "7") == 0
    other = {r["id"]: s for s, rs in _all_records(tmp_path / "c").items() for r in rs}
    assert other != where


def test_strict_writes_nothing(ham, tmp_path):
    root, _ = ham
    assert _convert(root, tmp_path / "out", "--strict") == 1
    assert not (tmp_path / "out").exists()


def test_bad_metadata_header_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "m.csv").write_text("image,diagnosis\nISIC_1,mel\n")
    code = main(["ham10000", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "img"),
                 "--metadata", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "missing column(s) lesion_id, image_id, dx" in capsys.readouterr().err
