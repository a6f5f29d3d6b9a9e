"""benchmarks/qwen_comparison.py: the replay's median τ path, the choice of fixed τ, the verdicts, and the docs'
tables as rendered from the saved results (no training here)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medloc_lightning.curriculum import ProgressSchedule

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def grid():
    from benchmarks import qwen_comparison

    return qwen_comparison


def _run(arm: str, seed: int, ious: dict, raises=(), tau_start=0.3) -> dict:
    return {"arm": arm, "seed": seed, "ious": ious, "raises": [list(r) for r in raises], "tau_start": tau_start,
            "final_tau": raises[-1][1] if raises else tau_start, "signal": None, "train_iou": None}


def test_the_replay_raises_at_the_median_step_while_half_the_runs_raise(grid) -> None:
    runs = [_run("relaxed_gates", 0, {}, [(20, 0.45), (31, 0.55)]),
            _run("relaxed_gates", 1, {}, [(20, 0.45), (36, 0.55), (100, 0.6)]),
            _run("relaxed_gates", 2, {}, [(25, 0.45)])]
    # raise 1 at median(20, 20, 25) = 20; raise 2 at median(31, 36, never) = 36; raise 3: one run of three
    milestones = grid.median_path(runs, steps=800)
    assert milestones == [[19.5 / 800, 0.3], [35.5 / 800, 0.45], [1.0, 0.55]]
    schedule = ProgressSchedule(milestones, window=5)  # the class the replay overlay configures
    for step in range(1, 801):
        schedule.observe([0.5], progress=step / 800)
    assert [(int(e["step"]), e["tau"]) for e in schedule.events] == [(20, 0.45), (36, 0.55)]


def test_a_path_without_raises_replays_a_constant_tau(grid) -> None:
    runs = [_run("relaxed_gates", s, {}) for s in range(3)]
    assert grid.median_path(runs, steps=100) == [[1.0, 0.3]]


def _results(diff: float, n: int = 400, seeds=(0, 1, 2)) -> dict:
    rng = np.random.default_rng(0)
    base = {s: rng.uniform(0.3, 0.9, n) for s in seeds}
    runs = []
    for arm, shift in (("medloc", diff), ("fixed_0.5", 0.0), ("fixed_0.3", -0.05), ("fixed_0.4", 0.02)):
        for s in seeds:
            values = np.clip(base[s] + shift, 0, 1).round(6).tolist()
            runs.append(_run(arm, s, {"val": values, "heldout": values}))
    return {"preset": "single", "seeds": list(seeds), "runs": runs}


def test_fixed_tau_is_tuned_on_validation_miou(grid) -> None:
    assert grid.tuned_fixed(_results(0.1)) == "fixed_0.4"
    partial = _results(0.1)
    partial["runs"] = [r for r in partial["runs"] if r["arm"] != "fixed_0.3"]
    assert grid.tuned_fixed(partial) is None


def test_claims_read_agrees_disagrees_not_detectable_and_untested(grid) -> None:
    table = grid.claims_table([_results(0.2), _results(-0.2), _results(0.0)], n_boot=500)
    first = next(line for line in table.splitlines() if line.startswith("| MedLoc-R1 beats fixed τ 0.5"))
    cells = [c.strip() for c in first.split("|")[3:6]]
    assert cells[0].startswith("**agrees**") and cells[1].startswith("**disagrees**")
    assert cells[2].startswith("**not detectable**: +0.0 [")
    raw = next(line for line in table.splitlines() if line.startswith("| MedLoc-R1 beats raw IoU"))
    assert raw.count("untested") == 3
    tuned = next(line for line in table.splitlines() if "tuned over" in line)
    assert "(vs fixed τ 0.4)" in tuned


def test_the_metrics_table_gives_the_sample_std_over_seeds(grid) -> None:
    results = {"runs": [_run("medloc", s, {"heldout": [v] * 4}) for s, v in enumerate((0.6, 0.7, 0.8))]}
    row = grid.table_metrics(results, "heldout").splitlines()[2]
    # per seed: Acc@0.75 0/0/100, pseudo-mAP 30/50/70 (3, 5, 7 of the 10 thresholds), mIoU 60/70/80
    assert row.startswith("| MedLoc-R1, the paper's gates | 3 | 100.0 ± 0.0 | 33.3 ± 57.7 | 50.0 ± 20.0 | 70.0 ± 10.0 |")


RESULTS = [BENCH / "results" / f"qwen_grid_{preset}.json" for preset in ("single", "small")]


@pytest.mark.skipif(not all(p.is_file() for p in RESULTS), reason="the grid's results are not in this checkout")
def test_the_docs_tables_are_rendered_from_the_results(grid) -> None:
    """Every generated table in docs/reproduction.md is what the code renders from the saved JSON."""
    doc = (BENCH.parent / "docs" / "reproduction.md").read_text(encoding="utf-8")
    targets = [json.loads(p.read_text()) for p in RESULTS]
    for results in targets:
        start, end = (f"<!-- qwen-grid:{results['preset']}:start -->", f"<!-- qwen-grid:{results['preset']}:end -->")
        assert doc.split(start, 1)[1].split(end, 1)[0].strip() == grid.report(results).strip()
    block = doc.split("<!-- qwen-grid:claims:start -->", 1)[1].split("<!-- qwen-grid:claims:end -->", 1)[0]
    assert block.strip() == grid.claims_table(targets).strip()
