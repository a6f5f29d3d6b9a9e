"""`medloc-data coco`: xywh -> xyxy, one box per query, ambiguous and crowd instances reported, split by image."""
from __future__ import annotations

import json

import pytest
from datatest_helpers import make_image, read_jsonl, snapshot

from medloc_lightning.data.cli import main


@pytest.fixture
def coco(tmp_path):
    tmp_path = tmp_path / "src"
    for i in range(1, 6):
        make_image(tmp_path / "images" / f"{i}.png", (80, 60), seed=i)
    data = {
        "categories": [{"id": 1, "name": "nodule"}, {"id": 2, "name": "polyp_head"}, {"id": 3, "name": "cyst"}],
        "images": [{"id": i, "file_name": f"{i}.png", "width": 80, "height": 60} for i in range(1, 6)]
        + [{"id": 6, "file_name": "missing.png", "width": 80, "height": 60},
           {"id": 7, "file_name": "1.png", "width": 81, "height": 60},
           {"id": 8, "file_name": "2.png", "width": 80, "height": 60}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20.5, 15], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [50, 30, 10, 10], "iscrowd": 0},
            {"id": 20, "image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0},
            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [20, 20, 30, 30], "iscrowd": 0},
            {"id": 30, "image_id": 3, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},
            {"id": 31, "image_id": 3, "category_id": 1, "bbox": [0, 0, 80, 60], "iscrowd": 1},
            {"id": 40, "image_id": 4, "category_id": 3, "bbox": [70, 50, 10.5, 10.5], "iscrowd": 0},
            {"id": 41, "image_id": 4, "category_id": 1, "bbox": [3, 3, 0, 5], "iscrowd": 0},
            {"id": 50, "image_id": 5, "category_id": 9, "bbox": [3, 3, 5, 5], "iscrowd": 0},
            {"id": 60, "image_id": 6, "category_id": 1, "bbox": [3, 3, 5, 5], "iscrowd": 0},
            {"id": 70, "image_id": 7, "category_id": 1, "bbox": [3, 3, 5, 5], "iscrowd": 0},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return tmp_path


def _run(root, out, *extra):
    return main(["coco", "--images", str(root / "images"), "--annotations", str(root / "instances.json"),
                 "--out", str(out), *extra])


def _records(out):
    return {r["id"]: (s, r) for s in ("train", "val", "test") for r in read_jsonl(out / f"{s}.jsonl")}


def test_default_skips_ambiguous_and_crowd(coco, tmp_path, capsys):
    before = snapshot(coco)
    assert _run(coco, tmp_path / "out") == 0
    assert snapshot(coco) == before
    records = _records(tmp_path / "out")
    assert sorted(records) == ["1-10", "1-11", "4-40"]
    assert records["1-10"][1]["bbox"] == [10.0, 5.0, 30.5, 20.0]
    assert records["1-10"][1]["query"] == "the nodule" and records["1-10"][1]["label"] == "nodule"
    assert records["1-11"][1]["query"] == "the polyp head"
    assert records["4-40"][1]["bbox"] == [70.0, 50.0, 80.0, 60.0]  # 0.5 px over the edge: clipped
    assert records["1-10"][0] == records["1-11"][0]  # one image never straddles splits
    assert records["1-10"][1]["dataset"] == "coco"
    err = capsys.readouterr().err
    assert "(annotation 20): 2 instances of 'nodule' in one image: the query 'the nodule' would be ambiguous" in err
    assert "(annotation 21)" in err
    assert "(annotation 31): crowd region of 'nodule' (iscrowd=1) is never emitted" in err
    assert "(annotation 30): 1 instances and a crowd region of 'nodule'" in err
    assert "(annotation 41): empty bbox" in err
    assert "annotation 50: unknown or unnamed category_id 9" in err
    assert "missing.png: image file not found (1 annotations not converted)" in err
    assert "the annotations say 81x60 but the image is 80x60" in err
    assert "note: 1 images have no annotations" in err


def test_multi_largest_keeps_the_largest_instance(coco, tmp_path, capsys):
    assert _run(coco, tmp_path / "out", "--multi", "largest", "--dataset", "med", "--modality", "ct") == 0
    records = _records(tmp_path / "out")
    assert records["2-21"][1]["query"] == "the largest nodule"
    assert records["2-21"][1]["bbox"] == [20.0, 20.0, 50.0, 50.0]
    assert "2-20" not in records and "3-30" not in records  # a crowd region cannot be ranked
    assert records["2-21"][1]["dataset"] == "med" and records["2-21"][1]["modality"] == "ct"
    assert "(annotation 20): not the largest of 2 instances of 'nodule'" in capsys.readouterr().err


def test_bad_annotation_file(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "a.json").write_text('{"images": []}')
    code = main(["coco", "--images", str(tmp_path / "images"), "--annotations", str(tmp_path / "a.json"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "'annotations' and 'categories' lists" in capsys.readouterr().err
