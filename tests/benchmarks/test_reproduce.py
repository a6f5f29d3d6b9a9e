"""benchmarks/reproduce.py: the grid, the paired comparisons and the report, on hand-made results (no training)."""
from __future__ import annotations

import json
import math
import statistics

import pytest


@pytest.fixture(scope="module")
def reproduce():
    from benchmarks import reproduce

    return reproduce


def _result(method: str, seed: int, regime: str, acc: float, taus: list[float] | None = None) -> dict:
    test = {"acc@0.5": acc, "acc@0.75": acc / 2, "pseudo_map": acc / 3, "miou": acc / 4}
    hits = round(20 * acc)  # 20 test images, `hits` of them boxed at IoU 0.8: Acc@0.5 is `acc`
    return {"method": method, "seed": seed, "regime": regime, "steps": 4, "test": test, "val": {},
            "zero_std_early": 0.5, "all_fail_early": 0.25, "num_raises": 1, "final_tau": 0.45, "wall_s": 3.0,
            "taus": taus or [0.3, 0.3, 0.45, 0.45], "hit_rates": [math.nan, 1.0, 0.5, 1.0],
            "test_ious": [0.8] * hits + [0.1] * (20 - hits)}


def test_every_method_runs_the_same_5_seeds(reproduce) -> None:
    runs = reproduce.grid(quick=False)
    seeds: dict[str, list[int]] = {}
    for method, seed in runs:
        seeds.setdefault(method, []).append(seed)
    assert all(s == [0, 1, 2, 3, 4] for s in seeds.values())
    assert {"v_triune_binary", "fixed_gated_moderate", "refresh_half_as_earned", "relaxed_gates"} <= set(seeds)
    from medloc_lightning.lab import method_names

    assert set(seeds) <= set(method_names())  # every row is a shipped config
    assert reproduce.grid(quick=True) == [(m, 0) for m in reproduce.MAIN]
    assert {a for _, a, _, _, _ in reproduce.CLAIMS} | {b for _, _, b, _, _ in reproduce.CLAIMS} <= set(seeds)


def test_comparisons_pair_the_seeds_both_methods_ran(reproduce) -> None:
    a = [_result("medloc", s, "prior", acc) for s, acc in ((0, 0.5), (1, 0.7), (2, 0.6))]
    b = [_result("raw_iou", s, "prior", acc) for s, acc in ((0, 0.4), (1, 0.7), (2, 0.8), (3, 0.9))]
    d = reproduce.compare({"medloc": a, "raw_iou": b}, "medloc", "raw_iou", "acc@0.5")
    assert d["seeds"] == 3 and d["images"] == 20  # seed 3 has no partner
    assert d["diff"] == pytest.approx(statistics.fmean([0.1, 0.0, -0.2]))
    assert d["lo"] < 0 < d["hi"] and d["verdict"] == "no detectable difference"
    assert reproduce.compare({"medloc": a}, "medloc", "raw_iou", "acc@0.5") is None


def _saved() -> dict:
    results = []
    for regime in ("random_init", "prior"):
        for seed in range(5):
            results += [_result("medloc", seed, regime, 0.6 + 0.01 * seed), _result("raw_iou", seed, regime, 0.5),
                        _result("fixed_tau", seed, regime, 0.2 + 0.15 * seed)]
        for seed in range(3):
            results += [_result(m, seed, regime, 0.4) for m in ("refresh_full", "refresh_quarter")]
    prior_report = {"fit": {"best_step": 40}, "target_val": {"policy": {"acc@0.3": 0.375, "acc@0.5": 0.04,
                                                                        "acc@0.75": 0.0, "miou": 0.21}},
                    "source_val": {"policy": {"acc@0.5": 0.86, "miou": 0.59}}}
    regimes = {"random_init": {"name": "random_init", "steps": 4, "learning_rate": 0.002, "prior": None,
                               "prior_report": None},
               "prior": {"name": "prior", "steps": 4, "learning_rate": 0.002,
                         "prior": {"source_preset": "easy", "n": 1200, "steps": 60}, "prior_report": prior_report}}
    return {"command": "python benchmarks/reproduce.py", "elapsed_s": 60.0, "machine": "2 CPU cores; no GPU",
            "data": {"n": 1200, "size": 128, "batch_size": 8}, "regimes": regimes, "results": results}


def test_the_report_has_both_regimes_their_paired_comparisons_and_group_fractions(reproduce, tmp_path) -> None:
    text = reproduce.report(_saved(), quick=False, figures=tmp_path / "figures", doc_dir=tmp_path)
    assert text.startswith(reproduce.START) and text.endswith(reproduce.END)
    assert "## Regime: random init" in text and "## Regime: prior" in text
    assert "SFT on the `easy` preset" in text and "Acc@0.3 37.5, Acc@0.5 4.0" in text
    # medloc - fixed_tau on Acc@0.5: 0.4 - 0.14 k for seeds k = 0..4 (each in steps of 1/20)
    diffs = [round(20 * (0.6 + 0.01 * k)) / 20 - round(20 * (0.2 + 0.15 * k)) / 20 for k in range(5)]
    row = next(line for line in text.splitlines() if line.startswith("| MedLoc-R1") and "− fixed_tau" in line)
    assert f"| 5 | {100 * statistics.fmean(diffs):+.1f} [".replace("-", "−") in row
    verdicts = text.split("## Verdicts", 1)[1]
    assert "| MedLoc-R1 beats raw IoU | Acc@0.75 |" in verdicts and verdicts.count("untested") >= 2
    medloc_raw = next(line for line in verdicts.splitlines() if line.startswith("| MedLoc-R1 beats raw IoU"))
    # Acc@0.75 counts the images at IoU 0.8: 12-13 of 20 against 10 of 20 on every seed; 20 images cannot tell
    assert medloc_raw.count("**not detectable**: +12.0 [+0.0, ") == 2
    main_row = next(line for line in text.splitlines() if line.startswith("| fixed_tau |"))
    assert "| 50.0 ± 0.0 | 25.0 ± 0.0 |" in main_row  # zero-std and all-fail groups, first 20%
    assert text.count("Refresh 1.0, 0.5 and 0.25 gave identical runs") == 2  # (both regimes; only re-scored here)
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == [
        f"reproduction_{regime}_tau_{group}.png" for regime in ("prior", "random_init")
        for group in ("main", "window_refresh")]


def test_report_only_rerenders_the_doc_from_the_json(reproduce, tmp_path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_saved()))
    doc = tmp_path / "reproduction.md"
    doc.write_text(f"# Kept heading\n\n{reproduce.START}\nold tables\n{reproduce.END}\n\nKept discussion.\n")
    reproduce.main(["--report-only", "--results", str(results), "--doc", str(doc), "--figures", str(tmp_path / "f")])
    text = doc.read_text()
    assert text.startswith("# Kept heading") and text.endswith("Kept discussion.\n") and "old tables" not in text
    assert "## Regime: prior" in text and "![reproduction_prior_tau_main](f/reproduction_prior_tau_main.png)" in text



def test_merge_replaces_the_rerun_runs_and_keeps_the_rest(reproduce, tmp_path) -> None:
    saved = _saved()
    rerun = [_result("medloc", 1, "prior", 0.9), _result("medloc", 7, "prior", 0.1)]
    new = {**_saved(), "command": "python benchmarks/reproduce.py --merge", "elapsed_s": 6.0, "results": rerun}
    merged = reproduce.merge(saved, new)
    keys = [(r["regime"], r["method"], r["seed"]) for r in merged["results"]]
    assert len(keys) == len(set(keys)) == len(saved["results"]) + 1  # seed 1 replaced, seed 7 added
    by_key = dict(zip(keys, merged["results"]))
    assert by_key[("prior", "medloc", 1)]["test"]["acc@0.5"] == 0.9
    assert by_key[("random_init", "medloc", 1)] == next(
        r for r in saved["results"] if (r["regime"], r["method"], r["seed"]) == ("random_init", "medloc", 1))
    assert merged["command"] == saved["command"] and merged["reruns"][0]["runs"] == 2
    text = reproduce.report(merged, quick=False, figures=tmp_path, doc_dir=tmp_path)
    assert "Rerun and merged in: `python benchmarks/reproduce.py --merge` (2 runs, 0.1 min" in text
    other = {**new, "regimes": {**new["regimes"], "prior": {**new["regimes"]["prior"], "learning_rate": 0.005}}}
    with pytest.raises(SystemExit, match="differs"):
        reproduce.merge(saved, other)
