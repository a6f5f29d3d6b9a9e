"""Synthetic grounding data: schema, boxes that match the pictures, true queries, determinism, splits, CLI."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from medloc_lightning.data.synth import PRESETS, SynthConfig, add_arguments, generate, run, split_counts
from medloc_lightning.data.synth.draw import Blob, footprint_box

SPLIT_NAMES = ("train", "val", "test")
EXPECTED_LABEL = {"dermoscopy": "lesion", "ultrasound": "nodule", "xray": "spot"}


def read_split(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def read_all(out: Path) -> list[dict]:
    return [r for s in SPLIT_NAMES for r in read_split(out, s)]


def luma(out: Path, rec: dict) -> np.ndarray:
    rgb = np.asarray(Image.open(out / rec["image"]).convert("RGB"), dtype=np.float64) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114])


def box_and_ring_means(img: np.ndarray, box: list[float], others: list[list[float]]) -> tuple[float, float]:
    """Mean inside the box, and in a ring around it (half the box size wide) that avoids other boxes."""
    h, w = img.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    m = max(2, int(0.5 * max(x2 - x1, y2 - y1)))
    ring = np.zeros((h, w), bool)
    ring[max(0, y1 - m) : y2 + m, max(0, x1 - m) : x2 + m] = True
    ring[y1:y2, x1:x2] = False
    full = ring.copy()
    for ox1, oy1, ox2, oy2 in (map(int, o) for o in others):
        ring[max(0, oy1 - 2) : oy2 + 2, max(0, ox1 - 2) : ox2 + 2] = False
    if ring.sum() < 4:  # hemmed in by other structures: use the whole ring
        ring = full
    return float(img[y1:y2, x1:x2].mean()), float(img[ring].mean())


def core_mean(img: np.ndarray, box: list[float]) -> float:
    """Mean over the central half (per side) of a box: the structure's body, not the corners."""
    x1, y1, x2, y2 = box
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, max(1.0, (x2 - x1) / 4), max(1.0, (y2 - y1) / 4)
    return float(img[int(cy - hh) : int(math.ceil(cy + hh)), int(cx - hw) : int(math.ceil(cx + hw))].mean())


def expected_sign(rec: dict) -> int:
    """Direction of the target's contrast implied by the modality (and, for X-ray, the query's wording)."""
    if rec["modality"] != "xray":
        return -1
    q = rec["query"]
    assert ("dense" in q or "sclerotic" in q) != ("lucent" in q or "lytic" in q), q
    return 1 if ("dense" in q or "sclerotic" in q) else -1


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("synth_mixed")
    counts = generate(out, n=120, seed=7, modality="mixed", size=112)
    return out, counts


def test_records_follow_the_schema(mixed):
    out, counts = mixed
    records = read_all(out)
    assert len(records) == sum(counts.values()) == 120
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert isinstance(r["id"], str) and r["id"]
        assert isinstance(r["query"], str) and r["query"].strip()
        assert isinstance(r["image"], str) and not Path(r["image"]).is_absolute() and ".." not in r["image"]
        assert r["image"].startswith("images/") and r["image"].endswith(".png")
        assert type(r["width"]) is int and type(r["height"]) is int and r["width"] == r["height"] == 112
        assert len(r["bbox"]) == 4 and all(type(v) is float for v in r["bbox"])
        assert r["dataset"] == "synthetic"
        assert r["label"] == EXPECTED_LABEL[r["modality"]]
        assert all(len(b) == 4 and all(type(v) is float for v in b) for b in r["distractors"])
        with Image.open(out / r["image"]) as im:
            assert im.format == "PNG" and im.size == (r["width"], r["height"])


def test_the_projects_validator_accepts_every_split(mixed):
    from medloc_lightning.data.schema import validate_records

    out, _ = mixed
    for split in SPLIT_NAMES:
        assert validate_records(out / f"{split}.jsonl") == []


def test_boxes_are_inside_the_image_and_not_degenerate(mixed):
    out, _ = mixed
    for r in read_all(out):
        for x1, y1, x2, y2 in [r["bbox"], *r["distractors"]]:
            assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]
            assert (x2 - x1) >= 2 and (y2 - y1) >= 2
        assert all(b != r["bbox"] for b in r["distractors"])


def test_box_covers_a_region_that_contrasts_with_its_surroundings(mixed):
    out, _ = mixed
    agree: dict[str, list[bool]] = {"dermoscopy": [], "ultrasound": [], "xray": []}
    for r in read_all(out):
        inside, ring = box_and_ring_means(luma(out, r), r["bbox"], r["distractors"])
        agree[r["modality"]].append((inside - ring) * expected_sign(r) > 0)
    for modality, hits in agree.items():
        assert len(hits) == 40
        assert np.mean(hits) >= 0.9, (modality, np.mean(hits))


def test_box_is_where_the_contrast_peaks(mixed):
    # The true box must beat the same box shifted by a quarter of its size in any direction. Measured on this
    # data: 1.0 / 0.73 / 0.95 (dermoscopy / ultrasound, whose echo bands confound the ring / X-ray); the
    # same with every box off by 15% of its width: 0.40 / 0.38 / 0.53.
    out, _ = mixed
    peaks: dict[str, list[bool]] = {"dermoscopy": [], "ultrasound": [], "xray": []}
    for r in read_all(out):
        img, sign = luma(out, r), expected_sign(r)
        x1, y1, x2, y2 = r["bbox"]
        dx, dy = (x2 - x1) / 4, (y2 - y1) / 4

        def score(b: list[float]) -> float:
            return sign * float(np.subtract(*box_and_ring_means(img, b, r["distractors"])))

        shifted = [[x1 + sx, y1 + sy, x2 + sx, y2 + sy] for sx, sy in ((dx, 0), (-dx, 0), (0, dy), (0, -dy))]
        inside = [b for b in shifted if b[0] >= 0 and b[1] >= 0 and b[2] <= r["width"] and b[3] <= r["height"]]
        peaks[r["modality"]].append(all(score(r["bbox"]) > score(b) for b in inside))
    rates = {m: float(np.mean(v)) for m, v in peaks.items()}
    assert np.mean(list(rates.values())) >= 0.75 and min(rates.values()) >= 0.6, rates


def _claims(rec: dict) -> dict[str, str]:
    """What the query asserts about the target, read with the test's own vocabulary."""
    q = rec["query"]
    claims = {}
    if re.search(r"\bleft\b", q):
        claims["h"] = "left"
    if re.search(r"\bright\b", q):
        claims["h"] = "right"
    if re.search(r"\b(top|upper)\b|probe", q):
        claims["v"] = "top"
    if re.search(r"\b(bottom|lower|deeper)\b", q):
        claims["v"] = "bottom"
    if re.search(r"\bsmall(er|est)\b", q):
        claims["size"] = "smaller"
    if re.search(r"\b(larg|bigg)(er|est)\b", q):
        claims["size"] = "larger"
    if re.search(r"\bdark(er|est)\b|\bmost? (pigmented|hypoechoic)\b", q):
        claims["tone"] = "darker"
    if re.search(r"\b(light|pal|bright)(er|est)\b|\blea?s[st] hypoechoic\b", q):
        claims["tone"] = "lighter"
    return claims


def test_queries_are_true_of_the_rendered_image(mixed):
    out, _ = mixed
    tone_checks, kinds = [], set()
    for r in read_all(out):
        claims = _claims(r)
        if not r["distractors"]:
            assert not claims, r["query"]  # one structure: a plain query
            continue
        assert claims, f"ambiguous query for {len(r['distractors']) + 1} structures: {r['query']!r}"
        kinds.update(claims)
        box = r["bbox"]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        area = (box[2] - box[0]) * (box[3] - box[1])
        for o in r["distractors"]:
            ox, oy = (o[0] + o[2]) / 2, (o[1] + o[3]) / 2
            oarea = (o[2] - o[0]) * (o[3] - o[1])
            expect = {"left": cx < ox, "right": cx > ox, "top": cy < oy, "bottom": cy > oy,
                      "smaller": area < oarea, "larger": area > oarea}
            for key in ("h", "v", "size"):
                if key in claims:
                    assert expect[claims[key]], (r["query"], box, o)
        if "tone" in claims:
            img = luma(out, r)
            mine = core_mean(img, box)
            theirs = [core_mean(img, o) for o in r["distractors"]]
            tone_checks.append(mine < min(theirs) if claims["tone"] == "darker" else mine > max(theirs))
    assert {"h", "v", "size", "tone"} <= kinds  # every attribute kind occurs in 120 images
    assert len(tone_checks) >= 5 and np.mean(tone_checks) >= 0.9


def test_single_modality_and_mixed_modalities(mixed, tmp_path):
    out, _ = mixed
    assert {r["modality"] for r in read_all(out)} == {"dermoscopy", "ultrasound", "xray"}
    generate(tmp_path, n=4, seed=0, modality="ultrasound", size=64)
    assert {r["modality"] for r in read_all(tmp_path)} == {"ultrasound"}


def test_split_counts_and_ratios(tmp_path):
    counts = generate(tmp_path, n=20, seed=1, size=64, config=SynthConfig(splits=(0.5, 0.25, 0.25)))
    assert counts == {"train": 10, "val": 5, "test": 5}
    assert {s: len(read_split(tmp_path, s)) for s in SPLIT_NAMES} == counts
    few = tmp_path / "few"
    assert generate(few, n=2, seed=1, size=64, config=SynthConfig(splits=(1, 0, 0))) == {
        "train": 2, "val": 0, "test": 0}
    assert all((few / f"{s}.jsonl").exists() for s in SPLIT_NAMES)  # empty splits are still written


@given(n=st.integers(0, 5000), ratios=st.tuples(*[st.floats(0, 10, allow_nan=False)] * 3))
def test_split_counts_property(n, ratios):
    assume(sum(ratios) > 1e-3)
    counts = split_counts(n, ratios)
    assert sum(counts.values()) == n
    for name, ratio in zip(SPLIT_NAMES, ratios):
        assert abs(counts[name] - n * ratio / sum(ratios)) < 1.0 + 1e-9


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    generate(tmp_path / "a", n=9, seed=11, size=80)
    generate(tmp_path / "b", n=9, seed=11, size=80, workers=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 9 + 3 + 1 and a == b  # images, splits, synth.json


def test_different_seed_gives_different_data(tmp_path):
    generate(tmp_path / "a", n=6, seed=1, size=64)
    generate(tmp_path / "b", n=6, seed=2, size=64)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) >= 8  # all 6 images and the non-empty splits differ


def test_images_do_not_depend_on_n(tmp_path):
    # Per-image random streams: growing a dataset keeps the earlier images.
    generate(tmp_path / "small", n=3, seed=5, size=64)
    generate(tmp_path / "big", n=7, seed=5, size=64)
    for p in (tmp_path / "small" / "images").iterdir():
        assert p.read_bytes() == (tmp_path / "big" / "images" / p.name).read_bytes()


def _relative_sizes(out: Path) -> np.ndarray:
    return np.array([math.sqrt((b[2] - b[0]) * (b[3] - b[1])) / r["width"]
                     for r in read_all(out) for b in [r["bbox"]]])


def _random_box_hits(records: list[dict], threshold: float, draws: int = 300) -> float:
    rng = np.random.default_rng(0)
    hits = []
    for r in records:
        c = rng.uniform(0, r["width"], (draws, 4))
        p = np.stack([np.minimum(c[:, 0], c[:, 2]), np.minimum(c[:, 1], c[:, 3]),
                      np.maximum(c[:, 0], c[:, 2]), np.maximum(c[:, 1], c[:, 3])], axis=1)
        g = np.array(r["bbox"])
        inter = (np.clip(np.minimum(p[:, 2], g[2]) - np.maximum(p[:, 0], g[0]), 0, None)
                 * np.clip(np.minimum(p[:, 3], g[3]) - np.maximum(p[:, 1], g[1]), 0, None))
        union = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
        hits.append(inter / union >= threshold)
    return float(np.mean(hits))


def test_hard_preset_is_smaller_fainter_and_rarely_hit_by_random_boxes(mixed, tmp_path):
    out, _ = mixed
    generate(tmp_path, n=45, seed=7, size=112, config=SynthConfig.preset("hard"))
    assert np.median(_relative_sizes(tmp_path)) < 0.6 * np.median(_relative_sizes(out))
    hard_contrast = [abs(np.subtract(*box_and_ring_means(luma(tmp_path, r), r["bbox"], r["distractors"])))
                     for r in read_all(tmp_path)]
    default_contrast = [abs(np.subtract(*box_and_ring_means(luma(out, r), r["bbox"], r["distractors"])))
                        for r in read_all(out)]
    assert np.median(hard_contrast) < np.median(default_contrast)
    assert _random_box_hits(read_all(tmp_path), 0.5) < 0.002


def test_presets_and_config_validation():
    assert SynthConfig.preset("default") == SynthConfig()
    assert {"default", "hard"} <= set(PRESETS)
    with pytest.raises(ValueError, match="unknown synth preset 'nope'"):
        SynthConfig.preset("nope")
    with pytest.raises(ValueError, match="target_size"):
        SynthConfig(target_size=(0.4, 0.2))
    with pytest.raises(ValueError, match="structures"):
        SynthConfig(structures=(0, 4))
    with pytest.raises(ValueError, match="splits"):
        SynthConfig(splits=(0, 0, 0))
    with pytest.raises(ValueError, match="modality"):
        generate("unused", n=1, modality="mri")


@settings(max_examples=60, deadline=None)
@given(cx=st.floats(16, 48), cy=st.floats(16, 48), r=st.floats(2, 14), aspect=st.floats(1, 2))
def test_footprint_box_of_an_axis_aligned_ellipse(cx, cy, r, aspect):
    # Ellipse with semi-axes r (x) and r / aspect (y), evaluated at pixel centres in float64.
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    level = ((xx - cx) / r) ** 2 + ((yy - cy) * aspect / r) ** 2
    assume(np.abs(level - 1.0).min() > 1e-4)  # no pixel centre on the border (float32 there)
    ys, xs = np.nonzero(level <= 1.0)
    assume(xs.size > 0)
    alpha, _ = Blob(cx, cy, r, aspect, 0.0, (), 0.1).field(64, 64)
    box, area = footprint_box(alpha)
    assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert area == xs.size


@given(st.lists(st.tuples(st.integers(0, 19), st.integers(0, 29)), min_size=1, max_size=30))
def test_footprint_box_is_the_tight_exclusive_box_of_the_mask(points):
    alpha = np.zeros((20, 30), np.float32)
    for y, x in points:
        alpha[y, x] = 0.75
    ys, xs = zip(*points)
    box, area = footprint_box(alpha)
    assert box == [min(xs), min(ys), max(xs) + 1, max(ys) + 1]
    assert area == len(set(points))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medloc-data synth")
    add_arguments(parser)
    return parser


def test_cli_contract(tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parser().parse_args(["--out", str(out), "--n", "6", "--seed", "3", "--modality", "xray",
                                 "--size", "64", "--preset", "hard", "--structures", "2", "3",
                                 "--splits", "4", "1", "1", "--contrast", "0.5", "0.6"])
    assert run(args) == 0
    assert "6" in capsys.readouterr().out
    records = read_all(out)
    assert [len(read_split(out, s)) for s in SPLIT_NAMES] == [4, 1, 1]
    assert {r["modality"] for r in records} == {"xray"}
    assert all(len(r["distractors"]) >= 1 for r in records)  # --structures 2 3 (two at least, room permitting)
    # Same data through the Python API with the same knobs: the CLI adds nothing of its own.
    cfg = dataclasses.replace(SynthConfig.preset("hard"), structures=(2, 3), splits=(4.0, 1.0, 1.0),
                              contrast=(0.5, 0.6))
    generate(tmp_path / "api", n=6, seed=3, modality="xray", size=64, config=cfg)
    assert _files(out) == _files(tmp_path / "api")


def test_cli_reports_bad_knobs(tmp_path, capsys, monkeypatch):
    from medloc_lightning.data.cli import main

    monkeypatch.delenv("MEDLOC_TRACEBACK", raising=False)
    assert main(["synth", "--out", str(tmp_path), "--n", "2", "--structures", "0", "5"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "medloc-data: error: SynthConfig.structures: need 1 <= min <= max <= 3, got (0, 5)"]  # one line
    with pytest.raises(ValueError, match="structures"):  # the Python entry point raises; the CLI reports it
        run(_parser().parse_args(["--out", str(tmp_path), "--n", "2", "--structures", "0", "5"]))
    with pytest.raises(SystemExit):
        _parser().parse_args(["--out", str(tmp_path), "--modality", "mri"])


def _users_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"id": "my-own-record"}\n')
    (folder / "val.jsonl").write_text('{"id": "another"}\n')
    return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


def test_the_generator_refuses_a_folder_it_did_not_make(tmp_path, capsys, monkeypatch):
    from medloc_lightning.data import SyntheticDataModule
    from medloc_lightning.data.cli import main

    monkeypatch.delenv("MEDLOC_TRACEBACK", raising=False)

    folder, before = _users_folder(tmp_path)
    with pytest.raises(ValueError, match=f"refusing to write into {folder}: it is not empty and was not made by"):
        generate(folder, n=3, size=32)
    assert main(["synth", "--out", str(folder), "--n", "3", "--size", "32"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"medloc-data: error: synth: refusing to write into {folder}")
    dm = SyntheticDataModule(root=str(folder), n=3, size=32)
    for call in (dm.prepare_data, lambda: dm.setup("fit")):  # what `fit` runs
        with pytest.raises(ValueError, match="was not made by the generator"):
            call()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_the_generator_writes_into_an_empty_folder_or_its_own(tmp_path):
    from medloc_lightning.data import SyntheticDataModule

    (tmp_path / "empty").mkdir()
    generate(tmp_path / "empty", n=3, size=32)
    generate(tmp_path / "empty", n=4, size=32)  # its own folder: regenerated
    stamp = json.loads((tmp_path / "empty" / "synth.json").read_text())
    assert stamp["status"] == "complete" and stamp["args"]["n"] == 4
    dm = SyntheticDataModule(root=str(tmp_path / "dm"), n=10, size=32, preset="easy")
    dm.prepare_data()
    train = tmp_path / "dm" / "train.jsonl"
    written = train.stat().st_mtime_ns
    dm.prepare_data()  # same arguments: kept
    assert train.stat().st_mtime_ns == written
    SyntheticDataModule(root=str(tmp_path / "dm"), n=12, size=32, preset="easy").prepare_data()
    assert len(train.read_text().splitlines()) == split_counts(12, PRESETS["easy"].splits)["train"]


def test_setup_without_a_trainer_regenerates_a_root_made_with_other_arguments_or_left_half_written(tmp_path):
    from medloc_lightning.data import SyntheticDataModule

    root = str(tmp_path / "dm")
    SyntheticDataModule(root=root, n=10, size=32, preset="easy").prepare_data()
    dm = SyntheticDataModule(root=root, n=12, size=32, preset="easy")  # other arguments
    dm.setup("fit")
    assert len(dm.datasets["train"]) == split_counts(12, PRESETS["easy"].splits)["train"]
    stamp = tmp_path / "dm" / "synth.json"
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "status": "writing"}))  # a killed generation
    SyntheticDataModule(root=root, n=12, size=32, preset="easy").setup("fit")
    assert json.loads(stamp.read_text())["status"] == "complete"
    written = stamp.stat().st_mtime_ns
    SyntheticDataModule(root=root, n=12, size=32, preset="easy").setup("fit")  # same arguments, complete: kept
    assert stamp.stat().st_mtime_ns == written
