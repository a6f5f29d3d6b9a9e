"""GRPO step time on CPU: our `GRPOGroundingModule` (Lightning) versus TRL's ``GRPOTrainer``, same problem.

Default model: the shipped tiny grounding prior (``medloc_lightning/pretrained/tiny-qwen2.5-vl-grounding``),
so rewards, advantages and gradients are not all zero; without it, a random model of the same dimensions
(and a warning that rewards will be zero). 2 synthetic 84 px prompts x 8 completions x exactly 33 new tokens,
the prior's prompt template, temperature 0.9, loss ``grpo``, our threshold reward (tau 0.3) on all sides,
one torch thread. Three sides: ours (prefill once per prompt, the default), ours_plain (``prefill_once=False``:
the before of that change) and TRL. Each side runs in its own fresh interpreter (so peak RSS is its own),
interleaved ours, ours_plain, TRL, ... so machine noise hits all; ratios are taken within a round and over
the pooled steps. Every side reports the same phases (prefill, decode, reference, log-probs, backward) in wall
and process-CPU time.

Run: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.grpo_vs_trl [--model-dir DIR] [--rounds 3]
     [--variants full,lora] [--sides ours,ours_plain,trl] [--warmup 3] [--steps 12]
     [--out benchmarks/results/grpo_vs_trl.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._grpo_bench_common import (
    PHASES,
    SIDES,
    VARIANTS,
    BenchSettings,
    describe,
    environment,
    resolve_model_dir,
    run_side,
)

LABELS = {"ours": "ours", "ours_plain": "ours, plain prefill", "trl": "TRL"}


def pooled(runs: list[dict[str, Any]], key: str | None = None) -> list[float]:
    """Every timed step's value of ``key`` over ``runs``: None for the wall step time, ``"cpu"`` for the
    process CPU time of the step, else a per-step extra (e.g. ``decode_s`` or ``cpu_decode_s``)."""
    if key is None:
        return [t for run in runs for t in run["step_times"]]
    if key == "cpu":
        return [t for run in runs for t in run["cpu_times"]]
    return [row[key] for run in runs for row in run["per_step"] if key in row]


def summarize_side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled step times, phases (wall and CPU), rewards and peak RSS of one side's runs."""
    step = describe(pooled(runs))
    lengths = describe(pooled(runs, "completion_length"))
    rows = runs[0]["generate_calls"][0]["output_rows"] if runs[0]["generate_calls"] else 0
    tokens = rows * lengths.get("median", 0.0)
    return {
        "step_s": step, "cpu_step_s": describe(pooled(runs, "cpu")),
        "phases_s": {key: describe(pooled(runs, key)) for key, _ in PHASES},
        "cpu_phases_s": {key: describe(pooled(runs, f"cpu_{key}")) for key, _ in PHASES},
        "generate_s": describe(pooled(runs, "generate_s")),
        "reward": describe(pooled(runs, "reward")), "zero_std_groups": describe(pooled(runs, "zero_std_groups")),
        "completion_length": lengths, "completion_tokens_per_step": tokens,
        "wall_ms_per_completion_token": 1e3 * step["median"] / tokens if tokens else None,
        "peak_rss_mib": [r["peak_rss_mib"] for r in runs], "trainable_params": runs[0]["trainable_params"],
        "generate_call": runs[0]["generate_calls"][:1], "per_round_step_median": [r["step_s"]["median"] for r in runs],
        "per_round_cpu_median": [r["cpu_step_s"]["median"] for r in runs],
    }


def ratios(side: dict[str, Any], trl: dict[str, Any]) -> dict[str, Any]:
    """``side`` over TRL: pooled medians, per round (runs made side by side) and peak RSS."""
    return {
        "wall": side["step_s"]["median"] / trl["step_s"]["median"],
        "cpu": side["cpu_step_s"]["median"] / trl["cpu_step_s"]["median"],
        "wall_per_round": [a / b for a, b in zip(side["per_round_step_median"], trl["per_round_step_median"])],
        "cpu_per_round": [a / b for a, b in zip(side["per_round_cpu_median"], trl["per_round_cpu_median"])],
        "peak_rss": max(side["peak_rss_mib"]) / max(trl["peak_rss_mib"]),
    }


def summarize_variant(runs: list[dict[str, Any]]) -> dict[str, Any]:
    sides = {side: summarize_side([r for r in runs if r["side"] == side]) for side in SIDES
             if any(r["side"] == side for r in runs)}
    out: dict[str, Any] = {"sides": sides}
    if "trl" in sides:
        out["over_trl"] = {side: ratios(s, sides["trl"]) for side, s in sides.items() if side != "trl"}
    if {"ours", "ours_plain"} <= set(sides):
        out["prefill_once_over_plain"] = ratios(sides["ours"], sides["ours_plain"])
    return out


def _fmt(d: dict[str, float], digits: int = 4) -> str:
    return f"{d['median']:.{digits}f}" if d.get("n") else "–"


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    """Step times and ratios, then the phase table per variant (the before/after of prefill-once included)."""
    lines = ["| variant | side | wall s/step, median (IQR) | CPU s/step, median | mean reward | groups with zero "
             "reward std | ms / completion token | peak RSS MiB (runs) |", "|---|---|---|---|---|---|---|---|"]
    for variant, v in summary.items():
        for side, s in v["sides"].items():
            rss = ", ".join(f"{x:.0f}" for x in s["peak_rss_mib"])
            per_token = s["wall_ms_per_completion_token"]
            lines.append(f"| {variant} | {LABELS[side]} | {s['step_s']['median']:.3f} ({s['step_s']['iqr']:.3f}) "
                         f"| {s['cpu_step_s']['median']:.3f} | {_fmt(s['reward'], 3)} "
                         f"| {_fmt(s['zero_std_groups'], 2)} "
                         f"| {per_token:.2f} | {max(s['peak_rss_mib']):.0f} ({rss}) |" if per_token else
                         f"| {variant} | {LABELS[side]} | {s['step_s']['median']:.3f} | | | | | |")
        for side, r in v.get("over_trl", {}).items():
            rounds = ", ".join(f"{x:.2f}" for x in r["wall_per_round"])
            cpu_rounds = ", ".join(f"{x:.2f}" for x in r["cpu_per_round"])
            lines.append(f"| {variant} | **{LABELS[side]} / TRL** | **{r['wall']:.2f}x** (rounds {rounds}) "
                         f"| **{r['cpu']:.2f}x** (rounds {cpu_rounds}) | | | | {r['peak_rss']:.2f}x |")
    for variant, v in summary.items():
        sides = v["sides"]
        names = list(sides)
        lines += ["", f"Phases ({variant}): median seconds per step, wall / CPU.", "",
                  "| phase | " + " | ".join(f"{LABELS[n]} wall | {LABELS[n]} CPU" for n in names) + " |",
                  "|---|" + "---|---|" * len(names)]
        for key, label in PHASES:
            cells = [f"{_fmt(sides[n]['phases_s'][key])} | {_fmt(sides[n]['cpu_phases_s'][key])}" for n in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        cells = [f"{_fmt(sides[n]['step_s'])} | {_fmt(sides[n]['cpu_step_s'])}" for n in names]
        lines.append("| whole step | " + " | ".join(cells) + " |")
        if "prefill_once_over_plain" in v:
            r = v["prefill_once_over_plain"]
            lines.append(f"\nPrefill once / plain prefill ({variant}): {r['wall']:.2f}x wall, {r['cpu']:.2f}x CPU, "
                         f"{r['peak_rss']:.2f}x peak RSS.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "grpo_vs_trl.json"))
    ap.add_argument("--model-dir", default=None,
                    help="a Qwen2.5-VL folder (default: the shipped tiny grounding prior, else a random stand-in)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one run of each side) per variant")
    ap.add_argument("--variants", default="full,lora", help=f"comma list of {VARIANTS}")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma list of {SIDES}")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=33, help="every completion is forced to this length")
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--records", default="synth:single", help="'synth:<preset>' or 'noise'")
    ap.add_argument("--tau", type=float, default=0.3, help="IoU threshold of the reward (the curriculum's start)")
    ap.add_argument("--log-every-n-steps", type=int, default=1,
                    help="our Trainer's logging interval (1 = TRL's logging_steps=1; Lightning's default is 50)")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    sides = [s for s in args.sides.split(",") if s]
    if unknown := set(sides) - set(SIDES):
        ap.error(f"unknown sides {sorted(unknown)}; choose from {SIDES}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="grpo-bench-model-") as tmp:
        model_dir, model_kind = resolve_model_dir(args.model_dir, tmp)
        print(f"model: {model_dir} ({model_kind})", flush=True)
        runs: list[dict[str, Any]] = []
        started = time.time()
        for variant in variants:
            settings = BenchSettings(model_dir=model_dir, variant=variant, prompts=args.prompts,
                                     generations=args.generations, new_tokens=args.new_tokens,
                                     image_size=args.image_size, records=args.records, tau=args.tau,
                                     warmup=args.warmup, steps=args.steps, threads=args.threads,
                                     log_every_n_steps=args.log_every_n_steps)
            for round_index in range(args.rounds):
                for side in sides:
                    result = run_side(side, settings)
                    result.update(variant=variant, round=round_index)
                    runs.append(result)
                    reward = result["extras"].get("reward", {}).get("median", float("nan"))
                    print(f"[{variant} round {round_index}] {side}: median {result['step_s']['median']:.3f} s/step "
                          f"(CPU {result['cpu_step_s']['median']:.3f}), reward {reward:.3f}, peak RSS "
                          f"{result['peak_rss_mib']:.0f} MiB, load {result['loadavg_before'][0]:.2f}"
                          f"->{result['loadavg_after'][0]:.2f}", flush=True)
    summary = {v: summarize_variant([r for r in runs if r["variant"] == v]) for v in variants}
    table = markdown(summary)
    loads = [r["loadavg_before"][0] for r in runs] + [r["loadavg_after"][0] for r in runs]
    env = environment()
    report = {
        "command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
        "model": {"dir": model_dir, "kind": model_kind},
        "settings": {k: v for k, v in settings.to_dict().items() if k not in ("model_dir", "variant")},
        "variants": variants, "sides": sides, "rounds": args.rounds, "wall_s": time.time() - started,
        "environment": env, "loadavg_1min": {"min": min(loads), "max": max(loads)},
        "summary": summary, "table_markdown": table, "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print()
    print(f"model {model_dir} ({model_kind}); torch {env['torch']}, transformers {env['transformers']}, trl "
          f"{env['trl']}, lightning {env['lightning']}; nproc {env['nproc']}; 1-min load during the run "
          f"{min(loads):.2f}-{max(loads):.2f}")
    print(table)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
