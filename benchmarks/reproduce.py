"""Reproduce MedLoc-R1's comparison and ablations on CPU with BoxPolicy on synthetic data (the curriculum lab),
in two regimes: from random weights, and from a shared grounding prior (see `medloc_lightning.lab`).

    python -m benchmarks.reproduce                 # the full grid: 24 methods x 5 seeds x 2 regimes
    python -m benchmarks.reproduce --quick         # the main methods x 1 seed, shorter runs (about 3 min)
    python -m benchmarks.reproduce --report-only   # re-render the doc and figures from the saved JSON
    python -m benchmarks.reproduce --regimes prior --methods sft --merge   # rerun some runs into the saved JSON

Each method is a config: the paper recipe alone (``medloc``) or with one baseline / ablation overlay. Every
method runs the same 5 seeds per regime; a seed sets the data order, the sampling and (from random weights) the
initial weights, so runs pair seed by seed. Each run keeps its per-image test IoUs, and every comparison and
verdict is a paired bootstrap over seeds and images (`benchmarks.paired`). Writes the raw results to
benchmarks/results/reproduction[_quick].json, tau-trajectory figures to docs/figures/, and the tables into
docs/reproduction.md (docs/reproduction_quick.md with --quick) between its results markers; the text around them
is kept. With ``--merge`` the runs made replace those of the same regime, method and seed in the saved JSON, which
keeps the rest and records the rerun's command.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script run from a checkout (and its worker processes) imports this checkout

MAIN = ["medloc", "fixed_tau", "v_triune", "v_triune_binary", "raw_iou", "sft"]
ABLATIONS = [
    ("Update criteria", ["medloc", "no_accuracy_check", "no_stability_check", "no_margin_check", "only_accuracy_check"]),
    ("Fixed schedules, reading (a): gated, constant δ, P and S",
     ["medloc", "fixed_gated_conservative", "fixed_gated_moderate", "fixed_gated_aggressive"]),
    ("Fixed schedules, reading (b): blind, raises on a clock",
     ["medloc", "fixed_conservative", "fixed_moderate", "fixed_aggressive"]),
    ("Window refresh, kept entries re-scored at the new τ", ["refresh_full", "medloc", "refresh_quarter"]),
    ("Window refresh, kept hits as earned", ["refresh_full_as_earned", "refresh_half_as_earned",
                                             "refresh_quarter_as_earned"]),
    ("Step decay", ["medloc", "step_linear", "step_cosine"]),
    ("Gates that let τ climb (ours)", ["medloc", "relaxed_gates", "relaxed_gates_blend"]),
]
PAIRS = [("medloc", "raw_iou"), ("medloc", "fixed_tau")]
SEEDS = [0, 1, 2, 3, 4]
"""Every method runs every seed, so every comparison pairs runs seed by seed."""
QUICK_STEPS = 300
LABELS = {"medloc": "MedLoc-R1 (recipe: adaptive, piecewise, refresh 0.5)", "refresh_full": "refresh 1.0 (full)",
          "refresh_quarter": "refresh 0.25", "refresh_full_as_earned": "refresh 1.0, as earned",
          "refresh_half_as_earned": "refresh 0.5, as earned", "refresh_quarter_as_earned": "refresh 0.25, as earned"}
# MedLoc-R1: Performance-Aware Curriculum Reward Scheduling for GRPO-Based Medical Visual Grounding (CVPR 2026):
# HAM10000, Qwen2.5-VL-3B. The ablation column is the paper's "Acc@0.75" as stated for its ablation table.
PAPER_MAIN = {"medloc": (94.46, 76.02), "sft": (90.31, 74.22), "fixed_tau": (64.65, 18.57),
              "v_triune": (88.92, 64.35), "raw_iou": (92.86, 69.25)}
PAPER_ABLATION = {"medloc": 94.96, "no_accuracy_check": 82.33, "no_margin_check": 90.86, "no_stability_check": 89.72,
                  "only_accuracy_check": 88.32, "fixed_conservative": 87.92, "fixed_moderate": 83.92,
                  "fixed_aggressive": 71.54, "fixed_gated_conservative": 87.92, "fixed_gated_moderate": 83.92,
                  "fixed_gated_aggressive": 71.54}
METRICS = [("Acc@0.5", "acc@0.5"), ("Acc@0.75", "acc@0.75"), ("pseudo-mAP", "pseudo_map"), ("mIoU", "miou")]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def grid(quick: bool) -> list[tuple[str, int]]:
    """(method, seed) of every run in one regime."""
    if quick:
        return [(m, 0) for m in MAIN]
    methods = list(dict.fromkeys([*MAIN, *(m for _, ms in ABLATIONS for m in ms)]))
    return [(m, s) for m in methods for s in SEEDS]


# --- running --------------------------------------------------------------------------------------------------

def _job(args: tuple) -> dict:
    method, seed, regime, steps, init, data_root, data_kwargs, learning_rate = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from medloc_lightning.lab import lab_data, run

    data = lab_data(data_root, **data_kwargs)
    result = run(method, data, steps=steps, seed=seed, init=init, learning_rate=learning_rate, regime=regime).to_dict()
    print(f"  {regime:11s} {method:26s} seed {seed}: Acc@0.5 {result['test']['acc@0.5']:.3f}  "
          f"Acc@0.75 {result['test']['acc@0.75']:.3f}  raises {result['num_raises']}  {result['wall_s']:.0f} s",
          flush=True)
    for key in ("hit_rates", "reward_stds", "iou_margins"):  # 4 decimals keep the file small
        result[key] = [round(v, 4) for v in result[key]]
    result["test_ious"] = [round(v, 6) for v in result["test_ious"]]
    return result


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Build the prior, run every regime's grid on ``args.workers`` processes, return what the JSON holds."""
    from medloc_lightning.lab import REGIMES, build_prior, lab_data

    start = time.perf_counter()
    data_kwargs = {"n": args.n, "size": args.size, "batch_size": args.batch_size}
    target = lab_data(args.data, **data_kwargs)
    target.prepare_data()  # generate once, before the workers start
    regimes: dict[str, Any] = {}
    jobs = []
    for name in args.regimes:
        regime = REGIMES[name]
        if args.learning_rate is not None:
            regime = replace(regime, learning_rate=args.learning_rate)
        steps = args.steps or (QUICK_STEPS if args.quick else regime.steps)
        init, prior_report = None, None
        if regime.prior is not None:
            print(f"building the {name} regime's prior ...", flush=True)
            init, prior_report = build_prior(f"{args.data}_{name}", regime.prior, target, size=args.size,
                                             batch_size=args.batch_size)
        regimes[name] = {**asdict(replace(regime, steps=steps)), "prior_report": prior_report}
        runs = [(m, s) for m, s in grid(args.quick) if not args.methods or m in args.methods]
        if args.seeds is not None:
            runs = [(m, s) for m in dict.fromkeys(m for m, _ in runs) for s in args.seeds]
        jobs += [(m, s, name, steps, init, args.data, data_kwargs, regime.learning_rate) for m, s in runs]
    print(f"{len(jobs)} runs on {args.workers} workers ...", flush=True)
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(_job, jobs, chunksize=1)
    else:
        results = [_job(j) for j in jobs]
    elapsed = time.perf_counter() - start
    machine = (f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, load "
               f"{os.getloadavg()[0]:.1f} at the end; {args.workers} worker processes; no GPU")
    command = "python -m benchmarks.reproduce" + "".join(f" {a}" for a in args.argv)
    return {"command": command, "elapsed_s": elapsed, "machine": machine, "data": data_kwargs, "regimes": regimes,
            "results": results}


def merge(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with ``new``'s runs in place of those of the same regime, method and seed (new ones appended),
    and ``new``'s command listed under ``reruns``. Refuses runs made on other data or in another regime setup
    (steps, learning rate, prior recipe, or a prior that scores differently)."""
    def key(r: dict) -> tuple:
        return r.get("regime", "random_init"), r["method"], r["seed"]

    def setup(regime: dict) -> dict:
        from medloc_lightning.lab.report import json_ready

        report = regime.get("prior_report") or {}
        fit = {k: v for k, v in (report.get("fit") or {}).items() if k in ("best_score", "best_step", "steps")}
        scores = {"fit": fit, **{k: report.get(k) for k in ("source_val", "target_val")}}
        return json_ready({**{k: v for k, v in regime.items() if k != "prior_report"}, "prior_scores": scores})

    if new["data"] != saved["data"]:
        raise SystemExit(f"--merge: data {new['data']} differs from the saved {saved['data']}")
    for name, regime in new["regimes"].items():
        if name in saved["regimes"] and setup(regime) != setup(saved["regimes"][name]):
            raise SystemExit(f"--merge: the {name} regime differs from the saved one (steps, learning rate or "
                             "prior); rerun the whole grid instead")
    made = {key(r) for r in new["results"]}
    order = {key(r): i for i, r in enumerate(saved["results"])}
    results = [r for r in saved["results"] if key(r) not in made] + new["results"]
    results.sort(key=lambda r: order.get(key(r), len(order)))
    reruns = [*saved.get("reruns", []), {"command": new["command"], "elapsed_s": new["elapsed_s"],
                                          "machine": new["machine"], "runs": len(new["results"])}]
    return {**saved, "regimes": {**new["regimes"], **saved["regimes"]}, "results": results, "reruns": reruns}


# --- the report ----------------------------------------------------------------------------------------------

def _values(runs: Sequence[dict], key: str) -> list[float]:
    return [r["test"][key] if key in r["test"] else r[key] for r in runs]


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` (sample std) of the values times ``scale``, NaN and None left out; one value alone, "–" for
    none."""
    values = [scale * v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _table(methods: Sequence[str], by: dict[str, list[dict]], paper: dict | None, paper_cols: Sequence[str]) -> list[str]:
    head = ("| method | seeds | " + " | ".join(name for name, _ in METRICS) +
            " | zero-std groups, first 20% | all-fail groups, first 20% | τ raises | final τ | wall s |")
    sep = "|---|---|" + "---|" * (len(METRICS) + 5)
    if paper:
        head += "".join(f" paper {c} |" for c in paper_cols)
        sep += "---|" * len(paper_cols)
    out = [head, sep]
    for m in methods:
        runs = by.get(m, [])
        if not runs:
            continue
        cells = [str(len(runs)), *(mean_std(_values(runs, key)) for _, key in METRICS),
                 mean_std(_values(runs, "zero_std_early")), mean_std(_values(runs, "all_fail_early")),
                 mean_std(_values(runs, "num_raises"), 1.0), mean_std(_values(runs, "final_tau"), 1.0, 2),
                 mean_std(_values(runs, "wall_s"), 1.0, 0)]
        line = f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |"
        if paper:
            got = paper.get(m)
            vals = got if isinstance(got, tuple) else (got,)
            line += "".join(f" {v} |" for v in vals) if got is not None else " – |" * len(paper_cols)
        out.append(line)
    return out


CLAIMS: tuple[tuple[str, str, str, str, str], ...] = (
    ("MedLoc-R1 beats fixed τ 0.5 (VLM-R1)", "medloc", "fixed_tau", "acc@0.5", ">"),
    ("… at Acc@0.75", "medloc", "fixed_tau", "acc@0.75", ">"),
    ("MedLoc-R1 beats raw IoU", "medloc", "raw_iou", "acc@0.75", ">"),
    ("MedLoc-R1 beats V-Triune", "medloc", "v_triune", "acc@0.75", ">"),
    ("MedLoc-R1 beats SFT", "medloc", "sft", "acc@0.75", ">"),
    ("Removing the reward check hurts", "medloc", "no_accuracy_check", "acc@0.75", ">"),
    ("Removing the stability check hurts", "medloc", "no_stability_check", "acc@0.75", ">"),
    ("Removing the margin check hurts", "medloc", "no_margin_check", "acc@0.75", ">"),
    ("All three checks beat the reward check alone", "medloc", "only_accuracy_check", "acc@0.75", ">"),
    ("Adaptive beats fixed conservative, blind (b)", "medloc", "fixed_conservative", "acc@0.75", ">"),
    ("Conservative beats moderate, blind (b)", "fixed_conservative", "fixed_moderate", "acc@0.75", ">"),
    ("Moderate beats aggressive, blind (b)", "fixed_moderate", "fixed_aggressive", "acc@0.75", ">"),
    ("Adaptive beats fixed conservative, gated (a)", "medloc", "fixed_gated_conservative", "acc@0.75", ">"),
    ("Conservative beats moderate, gated (a)", "fixed_gated_conservative", "fixed_gated_moderate", "acc@0.75", ">"),
    ("Moderate beats aggressive, gated (a)", "fixed_gated_moderate", "fixed_gated_aggressive", "acc@0.75", ">"),
    ("Semi-preserved refresh beats full replacement", "medloc", "refresh_full", "acc@0.75", ">"),
    ("Semi-preserved refresh beats quarter replacement", "medloc", "refresh_quarter", "acc@0.75", ">"),
    ("Linear step decay matches piecewise", "step_linear", "medloc", "acc@0.75", "≈"),
    ("Cosine step decay matches piecewise", "step_cosine", "medloc", "acc@0.75", "≈"),
    ("Ours: relaxed gates beat the paper's gates", "relaxed_gates", "medloc", "acc@0.75", ">"),
    ("Ours: the dense reward under the curriculum beats raw IoU", "relaxed_gates_blend", "raw_iou", "acc@0.75", ">"),
)
"""The paper's claims (and two of ours) as paired comparisons: (claim, a, b, metric, kind). ``>``: a beats b;
``≈``: a matches b (no detectable difference agrees)."""


def _ious(runs: Sequence[dict], seeds: Sequence[int]) -> Any:
    from benchmarks import paired

    return paired.pooled([{"seed": r["seed"], "ious": {"test": r["test_ious"]}} for r in runs], "test", seeds)


def compare(by: dict[str, list[dict]], a: str, b: str, key: str) -> dict[str, Any] | None:
    """a − b on ``key`` over the seeds both ran: the bootstrap interval over seeds and test images
    (`benchmarks.paired`), or None when they share no seed or lack per-image IoUs."""
    from benchmarks import paired

    ra, rb = by.get(a, []), by.get(b, [])
    seeds = sorted({r["seed"] for r in ra} & {r["seed"] for r in rb})
    if not seeds or not all("test_ious" in r for r in (*ra, *rb)):
        return None
    return paired.paired_difference(_ious(ra, seeds), _ious(rb, seeds), key)


def _verdict(claim_kind: str, d: dict[str, Any]) -> str:
    from benchmarks import paired

    if d["lo"] == d["hi"] == d["diff"] == 0.0:
        word = "agrees: identical runs" if claim_kind == "≈" else "not detectable: identical runs"
    elif claim_kind == "≈":
        word = "agrees" if d["verdict"] == paired.UNDETECTED else "disagrees"
    else:
        word = {paired.BETTER: "agrees", paired.WORSE: "disagrees"}.get(d["verdict"], "not detectable")
    return f"**{word}**: {paired.fmt_diff(d)}"


def claims_table(saved: dict[str, Any]) -> list[str]:
    """One row per claim, one column per regime: the verdict and a − b (points) with its 95% interval."""
    regimes = list(saved["regimes"])
    by_regime: dict[str, dict[str, list[dict]]] = {name: {} for name in regimes}
    for r in saved["results"]:
        by_regime[r.get("regime", "random_init")].setdefault(r["method"], []).append(r)
    out = ["| claim | metric | " + " | ".join(n.replace("_", " ") for n in regimes) + " |",
           "|---|---|" + "---|" * len(regimes)]
    names = dict((key, name) for name, key in METRICS)
    for claim, a, b, key, kind in CLAIMS:
        cells = []
        for name in regimes:
            d = compare(by_regime[name], a, b, key)
            cells.append("untested" if d is None else _verdict(kind, d))
        out.append(f"| {claim} | {names[key]} | " + " | ".join(cells) + " |")
    return out


def _paired_table(by: dict[str, list[dict]]) -> list[str]:
    from benchmarks import paired

    out = ["| comparison | seeds | " + " | ".join(f"Δ {name}" for name, _ in METRICS) + " |",
           "|---|---|" + "---|" * len(METRICS)]
    for a, b in PAIRS:
        diffs = [compare(by, a, b, key) for _, key in METRICS]
        if any(d is None for d in diffs):
            continue
        cells = [paired.fmt_diff(d) + {"better": " ▲", "worse": " ▼"}.get(d["verdict"], "") for d in diffs]
        out.append(f"| {LABELS.get(a, a)} − {b} | {diffs[0]['seeds']} | " + " | ".join(cells) + " |")
    return out


def _identical_refresh(by: dict[str, list[dict]], methods: Sequence[str]) -> str:
    """Whether the refresh fractions gave the same run, seed by seed (τ trajectory and test metrics)."""
    runs = [{r["seed"]: r for r in by.get(m, [])} for m in methods]
    seeds = sorted(set.intersection(*(set(r) for r in runs))) if all(runs) else []
    if not seeds:
        return ""
    same = [s for s in seeds if all(r[s]["taus"] == runs[0][s]["taus"] and r[s]["test"] == runs[0][s]["test"]
                                    for r in runs[1:])]
    return (f"Refresh 1.0, 0.5 and 0.25 gave identical runs (τ at every step and test metrics) on {len(same)} of "
            f"{len(seeds)} seeds.")


def _plots(by: dict[str, list[dict]], regime: str, suffix: str, figures: Path, doc_dir: Path) -> list[str]:
    from medloc_lightning.plotting import plot_overlay

    figures.mkdir(parents=True, exist_ok=True)
    written = []
    # SFT has no τ, and raw IoU's reward ignores it (its τ only labels the logs)
    groups = [("main", [m for m in MAIN if m not in ("sft", "raw_iou")])] + [
        (title.split(",")[0].split(":")[0].lower().replace(" ", "_") + ("_b" if "(b)" in title else "")
         + ("_as_earned" if "as earned" in title else ""), ms) for title, ms in ABLATIONS]
    for name, methods in groups:
        curves = {m: (list(range(1, len(by[m][0]["taus"]) + 1)), by[m][0]["taus"]) for m in methods if by.get(m)}
        if len(curves) > 1:
            path = figures / f"reproduction_{regime}_tau_{name}{suffix}.png"
            plot_overlay(curves, path, title=f"{regime}: tau per step (seed {by[next(iter(curves))][0]['seed']})",
                         ylabel="tau")
            written.append(Path(os.path.relpath(path, doc_dir)).as_posix())
    return written


def _regime_setup(name: str, regime: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    runs = [r for r in saved["results"] if r.get("regime", "random_init") == name]
    lines = [f"Runs: {max(r['steps'] for r in runs)} optimizer steps (batch {saved['data']['batch_size']} prompts × "
             f"G = 8), learning rate {regime['learning_rate']:g}, seeds {sorted({r['seed'] for r in runs})}."]
    prior, report = regime.get("prior"), regime.get("prior_report")
    if prior and report:
        target, source = report["target_val"]["policy"], report["source_val"]["policy"]
        lines.append(
            f"Prior: BoxPolicy trained by SFT on the `{prior['source_preset']}` preset ({prior['n']} images), best "
            f"source-validation mIoU at step {report['fit']['best_step']} of {prior['steps']}; every run of this regime "
            f"starts from it. On the target's validation split it scores Acc@0.3 {100 * target['acc@0.3']:.1f}, "
            f"Acc@0.5 {100 * target['acc@0.5']:.1f}, Acc@0.75 {100 * target['acc@0.75']:.1f}, "
            f"mIoU {100 * target['miou']:.1f} (source validation: Acc@0.5 {100 * source['acc@0.5']:.1f}, "
            f"mIoU {100 * source['miou']:.1f}).")
    return ["  \n".join(lines), ""]


def report(saved: dict[str, Any], quick: bool, figures: Path = ROOT / "docs" / "figures",
           doc_dir: Path = ROOT / "docs") -> str:
    """The markdown between the results markers: per regime, the main table, the paired comparisons, the
    ablations and the τ figures (written to ``figures``, linked relative to ``doc_dir``)."""
    suffix = "_quick" if quick else ""
    lines = [START, "", f"Command: `{saved['command']}`  ", f"Machine: {saved['machine']}; "
             f"{saved['elapsed_s'] / 60:.1f} min in all (data, prior and runs).  ",
             *(f"Rerun and merged in: `{r['command']}` ({r['runs']} runs, {r['elapsed_s'] / 60:.1f} min; "
               f"{r['machine']}).  " for r in saved.get("reruns", [])),
             f"Data: `lab` preset, {saved['data']['n']} images of "
             f"{saved['data']['size']} px, mixed modalities; metrics on the test split, in percent, mean ± std over "
             "seeds. Zero-std and all-fail groups: fractions of all groups over the first 20% of the steps.", ""]
    for name, regime in saved["regimes"].items():
        by: dict[str, list[dict]] = {}
        for r in saved["results"]:
            if r.get("regime", "random_init") == name:
                by.setdefault(r["method"], []).append(r)
        if not by:
            continue
        lines += [f"## Regime: {name.replace('_', ' ')}", ""] + _regime_setup(name, regime, saved)
        lines += ["### Main comparison", ""] + _table(MAIN, by, PAPER_MAIN, ["Acc@0.5", "Acc@0.75"]) + [""]
        pairs = _paired_table(by)
        if len(pairs) > 2:
            lines += ["### Paired comparisons", "",
                      "a − b in percentage points over the seeds both ran, with 95% bootstrap intervals over seeds and "
                      "test images, the pairing kept (▲ / ▼: the whole interval above / below 0).", ""] + pairs + [""]
        for title, methods in ABLATIONS:
            if sum(bool(by.get(m)) for m in methods) < 2:
                continue
            lines += [f"### Ablation: {title}", ""]
            paper = {m: PAPER_ABLATION[m] for m in methods if m in PAPER_ABLATION}
            lines += _table(methods, by, paper or None, ["Acc@0.75 (HAM10000)"])
            if title.startswith("Window refresh"):
                order = [m for m in methods if "full" in m] + [m for m in methods if "full" not in m]
                lines += ["", _identical_refresh(by, order)]
            lines.append("")
        plots = _plots(by, name, suffix, figures, doc_dir)
        if plots:
            lines += ["### τ trajectories (first seed)", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["## Verdicts", "",
              "Each claim as a paired comparison, a − b on the test split over the seeds both ran, in points, with its "
              "95% bootstrap interval over seeds and test images: **agrees** when the interval lies on the claim's "
              "side of 0 (for \"matches\", when it straddles 0), **disagrees** when it lies on the other side, "
              "**not detectable** when it straddles 0.", ""] + claims_table(saved) + ["", END]
    return "\n".join(lines)


def write(saved: dict[str, Any], doc: Path, quick: bool, figures: Path) -> None:
    block = report(saved, quick, figures, doc.parent)
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# Reproduction on CPU\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    doc.write_text(head + block + tail, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the main methods, 1 seed, shorter runs, both regimes")
    ap.add_argument("--regimes", nargs="+", default=["random_init", "prior"], choices=["random_init", "prior"])
    ap.add_argument("--methods", nargs="*", help="subset of methods (default: the whole grid)")
    ap.add_argument("--seeds", nargs="*", type=int, help=f"these seeds for every method (default: {SEEDS})")
    ap.add_argument("--steps", type=int, help="optimizer steps per run (default: each regime's)")
    ap.add_argument("--learning-rate", type=float, help="GRPO/SFT learning rate of every run (default: each regime's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", default=str(ROOT / "data" / "lab"), help="the lab's data (the prior goes beside it)")
    ap.add_argument("--results", help="default: benchmarks/results/reproduction[_quick].json")
    ap.add_argument("--doc", help="default: docs/reproduction.md (docs/reproduction_quick.md with --quick)")
    ap.add_argument("--figures", default=str(ROOT / "docs" / "figures"), help="where the τ figures go")
    ap.add_argument("--no-doc", action="store_true", help="print the tables instead of writing the doc")
    ap.add_argument("--merge", action="store_true",
                    help="merge the runs made into the saved JSON (replacing the same regime, method and seed)")
    ap.add_argument("--report-only", action="store_true",
                    help="re-render the doc and figures from the saved JSON results, without training")
    args = ap.parse_args(argv)
    args.argv = argv
    suffix = "_quick" if args.quick else ""
    out = Path(args.results or ROOT / "benchmarks" / "results" / f"reproduction{suffix}.json")
    if args.report_only:
        saved = json.loads(out.read_text(encoding="utf-8"))
    else:
        saved = train(args)
        if args.merge and out.exists():
            saved = merge(json.loads(out.read_text(encoding="utf-8")), saved)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved), encoding="utf-8")
    doc = Path(args.doc or ROOT / "docs" / f"reproduction{suffix}.md")
    if args.no_doc:
        print(report(saved, args.quick, Path(args.figures), doc.parent))
        return
    write(saved, doc, args.quick, Path(args.figures))
    print(f"wrote {doc} and {out} ({saved['elapsed_s'] / 60:.1f} min in all)")


if __name__ == "__main__":
    main()
