"""`medloc-data stats`: counts and box-size distributions on a hand-computed file."""
from __future__ import annotations

import json

import pytest
from datatest_helpers import record, write_jsonl

from medloc_lightning.data.cli import main
from medloc_lightning.data.schema import read_records
from medloc_lightning.data.stats import compute_stats, distribution


def test_distribution_quantiles():
    d = distribution([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    assert d == {"min": 0, "p10": 10, "p25": 25, "p50": 50, "p75": 75, "p90": 90, "max": 100, "mean": 50}
    assert distribution([])["p50"] is None


@pytest.fixture
def stats_file(tmp_path):
    # 100x100 images; box sides 10, 20, 40, 100 -> areas 100, 400, 1600, 10000 px²
    lines = [record("a", "x.png", (0, 0, 10, 10), (100, 100), label="mel", dataset="ham"),
             record("b", "x.png", (0, 0, 20, 20), (100, 100), label="mel", dataset="ham"),
             record("c", "y.png", (0, 0, 40, 40), (100, 100), label="nv", dataset="ham", modality="dermoscopy"),
             record("d", "z.png", (0, 0, 100, 100), (100, 100))]
    return write_jsonl(tmp_path / "s.jsonl", lines)


def test_compute_stats(stats_file):
    records, _ = read_records(stats_file, check_images=False)
    s = compute_stats(records)
    assert s["records"] == 4 and s["images"] == 3
    assert s["per_label"] == {"mel": 2, "(none)": 1, "nv": 1}
    assert s["per_dataset"] == {"ham": 3, "(none)": 1}
    assert s["area_fraction"]["min"] == pytest.approx(0.01) and s["area_fraction"]["max"] == pytest.approx(1.0)
    assert s["area_fraction"]["p50"] == pytest.approx((0.04 + 0.16) / 2)
    assert s["width_fraction"]["p50"] == pytest.approx(0.3)
    assert s["size_classes"] == {"small": 2, "medium": 1, "large": 1}


def test_stats_command_text_and_json(stats_file, capsys):
    assert main(["stats", str(stats_file)]) == 0
    text = capsys.readouterr().out
    assert "4 records, 3 images" in text
    assert "box area / image area:  min 0.0100" in text
    assert "small (<32² px) 2 (50.0%)" in text
    assert main(["stats", str(stats_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size_classes"]["large"] == 1


def test_stats_reports_invalid_records(tmp_path, capsys):
    path = write_jsonl(tmp_path / "s.jsonl", [record("a", "x.png"), "{oops"])
    assert main(["stats", str(path)]) == 1
    captured = capsys.readouterr()
    assert f"{path}:2: json: invalid JSON" in captured.err
    assert "1 records, 1 images" in captured.out
