"""Reproduce MedLoc-R1's comparison and ablations on CPU with BoxPolicy on synthetic data (the curriculum lab).

    python benchmarks/reproduce.py                 # the default grid: 16 methods x 3 seeds (<= 30 min, 2 cores)
    python benchmarks/reproduce.py --quick         # the 5 main methods x 1 seed, shorter runs (<= 5 min)

Writes the raw results to benchmarks/results/reproduction[_quick].json, τ-trajectory plots to docs/figures/,
and the tables into docs/reproduction.md (docs/reproduction_quick.md with --quick) between its results
markers; the hand-written discussion around them is kept.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAIN = ["medloc", "fixed_tau", "v_triune", "raw_iou", "sft"]
ABLATIONS = [
    ("Update criteria", ["medloc", "no_accuracy_check", "no_stability_check", "no_margin_check", "only_accuracy_check"]),
    ("Schedules: adaptive vs fixed", ["medloc", "fixed_conservative", "fixed_moderate", "fixed_aggressive"]),
    ("Window refresh", ["refresh_full", "medloc", "refresh_quarter"]),
    ("Step decay", ["medloc", "step_linear", "step_cosine"]),
]
LABELS = {"medloc": "MedLoc-R1 (adaptive, piecewise, refresh 0.5)", "refresh_full": "refresh 1.0 (full)",
          "refresh_quarter": "refresh 0.25"}
# The paper's numbers as the summary in ../shared/paper states them (HAM10000, 3B).
PAPER_MAIN = {"medloc": (94.46, 76.02), "sft": (90.31, 74.22), "fixed_tau": (64.65, 18.57),
              "v_triune": (88.92, 64.35), "raw_iou": (92.86, 69.25)}
PAPER_ABLATION = {"medloc": 94.96, "no_accuracy_check": 82.33, "no_margin_check": 90.86, "no_stability_check": 89.72,
                  "only_accuracy_check": 88.32, "fixed_conservative": 87.92, "fixed_moderate": 83.92,
                  "fixed_aggressive": 71.54}
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _job(args: tuple) -> dict:
    method, seed, steps, data_root, data_kwargs, run_kwargs = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from medloc_lightning.lab import lab_data, run

    data = lab_data(data_root, **data_kwargs)
    result = run(method, data, steps=steps, seed=seed, **run_kwargs).to_dict()
    print(f"  {method:22s} seed {seed}: Acc@0.5 {result['test']['acc@0.5']:.3f}  Acc@0.75 {result['test']['acc@0.75']:.3f}"
          f"  raises {result['num_raises']}  {result['wall_s']:.0f} s", flush=True)
    return result


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 1, single_std: bool = True) -> str:
    """``mean ± std`` of the non-NaN values (fractions as percentages by default); "–" when there are none.
    One value shows ``± 0.0`` unless ``single_std`` is False."""
    values = [scale * v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else (0.0 if single_std else None)
    return f"{statistics.fmean(values):.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _plain(values: list[float], digits: int = 1) -> str:
    return _mean_std(values, scale=1.0, digits=digits, single_std=False)


def _table(rows: list[str], by: dict[str, list[dict]], paper: dict | None, paper_cols: list[str]) -> list[str]:
    head = ("| method | Acc@0.5 | Acc@0.75 | pseudo-mAP | mIoU | zero-std groups, first 20% | of which all-fail | "
            "τ raises | wall s |")
    sep = "|---|---|---|---|---|---|---|---|---|"
    if paper:
        head += "".join(f" paper {c} |" for c in paper_cols)
        sep += "---|" * len(paper_cols)
    out = [head, sep]
    for m in rows:
        runs = by.get(m, [])
        if not runs:
            continue
        cells = [_mean_std([r["test"]["acc@0.5"] for r in runs]), _mean_std([r["test"]["acc@0.75"] for r in runs]),
                 _mean_std([r["test"]["pseudo_map"] for r in runs]), _mean_std([r["test"]["miou"] for r in runs]),
                 _mean_std([r["zero_std_early"] for r in runs]), _mean_std([r["all_fail_early"] for r in runs]),
                 _plain([r["num_raises"] for r in runs]),
                 _plain([r["wall_s"] for r in runs], 0)]
        line = f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |"
        if paper:
            got = paper.get(m)
            vals = got if isinstance(got, tuple) else (got,)
            line += "".join(f" {v if v is not None else '–'} |" for v in vals) if got is not None else " – |" * len(paper_cols)
        out.append(line)
    return out


def _ordering(by: dict[str, list[dict]], paper: dict, metric: str, index: int | None) -> str:
    present = [m for m in paper if by.get(m)]
    ours = sorted(present, key=lambda m: -statistics.fmean(r["test"][metric] for r in by[m]))
    theirs = sorted(present, key=lambda m: -(paper[m][index] if index is not None else paper[m]))
    agree = sum(a == b for a, b in zip(ours, theirs))
    return (f"ours by {metric}: {' > '.join(ours)}  \npaper: {' > '.join(theirs)}  \n"
            f"({agree} of {len(present)} positions agree)")


def _plots(by: dict[str, list[dict]], figures: Path, suffix: str) -> list[str]:
    from medloc_lightning.plotting import plot_overlay

    figures.mkdir(parents=True, exist_ok=True)
    written = []
    # SFT has no τ, and raw IoU's reward ignores it (its τ only labels the logs)
    groups = [("main", [m for m in MAIN if m not in ("sft", "raw_iou")])] + [(t.split(":")[0].lower().replace(" ", "_"), ms)
                                                            for t, ms in ABLATIONS]
    for name, methods in groups:
        curves = {}
        for m in methods:
            if by.get(m):
                taus = by[m][0]["taus"]
                curves[m] = (list(range(len(taus))), taus)
        if len(curves) > 1:
            path = figures / f"reproduction_tau_{name}{suffix}.png"
            plot_overlay(curves, path, title=f"tau per step (seed {by[next(iter(curves))][0]['seed']})", ylabel="tau")
            written.append(str(path.relative_to(ROOT)))
    return written


def _machine(workers: int) -> str:
    return (f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
            f"load {os.getloadavg()[0]:.1f} at the end; {workers} worker processes")


def report(results: list[dict], args: argparse.Namespace, command: str, elapsed: float, machine: str) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["method"], []).append(r)
    suffix = "_quick" if args.quick else ""
    plots = _plots(by, ROOT / "docs" / "figures", suffix)
    lines = [START, "", f"Command: `{command}`  ",
             f"Machine: {machine}; total {elapsed / 60:.1f} min.  ",
             f"Runs: {max(r['steps'] for r in results)} optimizer steps (batch {args.batch_size} prompts x G = 8), "
             f"seeds {sorted({r['seed'] for r in results})}; "
             f"data: `lab` preset, {args.n} images of {args.size} px, mixed modalities; test split for the metrics. "
             "Metrics are percentages, mean ± std over seeds.", "",
             "### Main comparison", ""]
    lines += _table(MAIN, by, PAPER_MAIN, ["Acc@0.5", "Acc@0.75"])
    lines += ["", _ordering(by, {m: v for m, v in PAPER_MAIN.items()}, "acc@0.75", 1), ""]
    for title, methods in ABLATIONS:
        if sum(bool(by.get(m)) for m in methods) < 2:
            continue  # nothing to compare (--quick runs only the main methods)
        lines += [f"### Ablation: {title}", ""]
        paper = {m: PAPER_ABLATION[m] for m in methods if m in PAPER_ABLATION}
        lines += _table(methods, by, paper or None, ["Acc@0.75 (HAM10000)"])
        if len(paper) > 1:
            lines += ["", _ordering(by, paper, "acc@0.75", None)]
        lines.append("")
    lines += ["### τ trajectories (first seed)", ""] + [f"![{Path(p).stem}]({Path(p).relative_to('docs')})" for p in plots]
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 5 main methods, 1 seed, shorter runs")
    ap.add_argument("--methods", nargs="*", help="subset of methods (default: all for the grid)")
    ap.add_argument("--seeds", nargs="*", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", default=str(ROOT / "data" / "lab"))
    ap.add_argument("--doc", help="default: docs/reproduction.md (docs/reproduction_quick.md with --quick)")
    ap.add_argument("--no-doc", action="store_true", help="print the tables instead of writing the doc")
    ap.add_argument("--report-only", action="store_true",
                    help="re-render the doc and plots from the saved JSON results, without training")
    args = ap.parse_args()
    from medloc_lightning.lab import METHODS

    grid = sorted(set(MAIN) | {m for _, ms in ABLATIONS for m in ms}, key=list(METHODS).index)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.steps = args.steps or (500 if args.quick else 1000)
    methods = args.methods or (MAIN if args.quick else grid)
    data_kwargs = {"n": args.n, "size": args.size, "batch_size": args.batch_size}

    out = ROOT / "benchmarks" / "results" / f"reproduction{'_quick' if args.quick else ''}.json"
    if args.report_only:
        saved = json.loads(out.read_text())
        _write(args, saved["results"], saved["command"], saved["elapsed_s"], saved.get("machine", "not recorded"), out)
        return

    from medloc_lightning.lab import lab_data

    lab_data(args.data, **data_kwargs).prepare_data()  # generate once, before the workers start
    jobs = [(m, s, args.steps, args.data, data_kwargs, {}) for s in args.seeds for m in methods]
    command = "python benchmarks/reproduce.py" + (" --quick" if args.quick else "") + \
        "".join(f" {a}" for a in sys.argv[1:] if a != "--quick")
    print(f"{len(jobs)} runs on {args.workers} workers ...", flush=True)
    start = time.perf_counter()
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(_job, jobs, chunksize=1)
    else:
        results = [_job(j) for j in jobs]
    elapsed = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = _machine(args.workers)
    for r in results:  # per-step series: 4 decimals are plenty and keep the file small
        r["hit_rates"] = [round(h, 4) for h in r["hit_rates"]]
    out.write_text(json.dumps({"command": command, "elapsed_s": elapsed, "machine": machine, "results": results}))
    _write(args, results, command, elapsed, machine, out)


def _write(args: argparse.Namespace, results: list[dict], command: str, elapsed: float, machine: str,
           out: Path) -> None:
    block = report(results, args, command, elapsed, machine)
    if args.no_doc:
        print(block)
        return
    doc = Path(args.doc or ROOT / "docs" / f"reproduction{'_quick' if args.quick else ''}.md")
    text = doc.read_text() if doc.exists() else f"# Reproduction on CPU\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    doc.write_text(head + block + tail)
    print(f"wrote {doc} and {out} ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
