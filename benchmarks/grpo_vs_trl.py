"""GRPO step time on CPU: our `GRPOGroundingModule` (Lightning) versus TRL's ``GRPOTrainer``, same problem.

Tiny random Qwen2.5-VL, 2 prompts x 8 completions x exactly 32 new tokens, 224 px noise images,
temperature 0.9, loss ``grpo``, our threshold reward on both sides, one torch thread. Each side runs in its
own fresh interpreter (so peak RSS is its own), interleaved ours, TRL, ours, TRL, ... so machine noise
hits both; ratios are taken within a round and over the pooled steps.

Run: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/grpo_vs_trl.py [--rounds 3] [--variants full,lora]
     [--warmup 3] [--steps 12] [--out benchmarks/results/grpo_vs_trl.json]
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

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from _grpo_bench_common import VARIANTS, BenchSettings, describe, environment, run_side  # noqa: E402

OUR_PHASES = (("rollout_s", "rollout (encode + generate + decode + parse)"),
              ("generate_s", "  of which model.generate"),
              ("reward_s", "reward + advantages"),
              ("logprobs_s", "no-grad log-probs (old/ref)"),
              ("backward_s", "policy forward + backward + clip + AdamW"),
              ("overhead_s", "Lightning loop, hooks, logging, data"),
              ("log_step_s", "  of which the module's metric logging (_log_step)"))
TRL_PHASES = (("prepare_s", "_generate_and_score_completions (prompts, images, generate, decode, reward)"),
              ("generate_s", "  of which model.generate"),
              ("loss_forward_s", "compute_loss (policy forward + loss)"),
              ("rest_s", "backward + clip + AdamW + Trainer loop, logging, data"))


def pooled(runs: list[dict[str, Any]], key: str | None = None) -> list[float]:
    """Every timed step's value of ``key`` over ``runs``: None for the wall step time, ``"cpu"`` for the
    process CPU time of the step, else a per-step extra."""
    if key is None:
        return [t for run in runs for t in run["step_times"]]
    if key == "cpu":
        return [t for run in runs for t in run["cpu_times"]]
    parts = {"overhead_s": ("rollout_s", "reward_s", "logprobs_s", "backward_s"),  # ours: the step minus phases
             "rest_s": ("prepare_s", "loss_forward_s")}  # TRL: the step minus its two timed calls
    if key in parts:
        return [t - sum(row.get(p, 0.0) for p in parts[key])
                for run in runs for t, row in zip(run["step_times"], run["per_step"])]
    return [row[key] for run in runs for row in run["per_step"] if key in row]


def summarize_variant(ours: list[dict[str, Any]], trl: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled step-time statistics per side, the ratios, our phase split and the parity checks."""
    ours_step, trl_step = describe(pooled(ours)), describe(pooled(trl))
    ours_cpu, trl_cpu = describe(pooled(ours, "cpu")), describe(pooled(trl, "cpu"))

    def per_round(key: str) -> list[float]:
        return [describe(o[key])["median"] / describe(t[key])["median"] for o, t in zip(ours, trl)]

    phases = {key: describe(pooled(ours, key)) for key, _ in OUR_PHASES}
    return {
        "ours_step_s": ours_step, "trl_step_s": trl_step, "ours_cpu_step_s": ours_cpu, "trl_cpu_step_s": trl_cpu,
        "ratio_ours_over_trl": ours_step["median"] / trl_step["median"],
        "ratio_per_round": per_round("step_times"),
        "cpu_ratio_ours_over_trl": ours_cpu["median"] / trl_cpu["median"],
        "cpu_ratio_per_round": per_round("cpu_times"),
        "ours_phases_s": phases,
        "trl_generate_s": describe(pooled(trl, "generate_s")),
        "trl_phases_s": {key: describe(pooled(trl, key)) for key, _ in TRL_PHASES},
        "trl_step_time_metric_s": describe(pooled(trl, "trl_step_time_s")),
        "completion_length": {"ours": describe(pooled(ours, "completion_length")),
                              "trl": describe(pooled(trl, "completion_length"))},
        "peak_rss_mib": {"ours": [r["peak_rss_mib"] for r in ours], "trl": [r["peak_rss_mib"] for r in trl]},
        "generate_call": {"ours": ours[0]["generate_calls"][:1], "trl": trl[0]["generate_calls"][:1]},
        "trainable_params": {"ours": ours[0]["trainable_params"], "trl": trl[0]["trainable_params"]},
        "per_token_ms": {"ours": 1e3 * ours_step["median"] / _tokens(ours),
                         "trl": 1e3 * trl_step["median"] / _tokens(trl)},
    }


def _tokens(runs: list[dict[str, Any]]) -> float:
    """Completion tokens per step (rows x mean completion length)."""
    call = runs[0]["generate_calls"][0]
    return call["output_rows"] * describe(pooled(runs, "completion_length"))["median"]


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    """The results as markdown tables: step times and ratios, then our phase split."""
    lines = ["| variant | side | wall s/step, median | wall IQR (q1-q3) | CPU s/step, median | steps "
             "| model.generate s | completion tokens | wall ms / completion token | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, s in summary.items():
        for side, step, cpu, gen in (("ours", s["ours_step_s"], s["ours_cpu_step_s"], s["ours_phases_s"]["generate_s"]),
                                     ("TRL", s["trl_step_s"], s["trl_cpu_step_s"], s["trl_generate_s"])):
            key = side.lower()
            rss = s["peak_rss_mib"][key]
            lines.append(f"| {variant} | {side} | {step['median']:.3f} | {step['iqr']:.3f} "
                         f"({step['q1']:.3f}-{step['q3']:.3f}) | {cpu['median']:.3f} | {step['n']} "
                         f"| {gen['median']:.3f} | {s['completion_length'][key]['median']:.1f} "
                         f"| {s['per_token_ms'][key]:.2f} | {max(rss):.0f} ({', '.join(f'{v:.0f}' for v in rss)}) |")
        wall_rounds = ", ".join(f"{r:.2f}" for r in s["ratio_per_round"])
        cpu_rounds = ", ".join(f"{r:.2f}" for r in s["cpu_ratio_per_round"])
        lines.append(f"| {variant} | **ours / TRL** | **{s['ratio_ours_over_trl']:.2f}x** | rounds: {wall_rounds} "
                     f"| **{s['cpu_ratio_ours_over_trl']:.2f}x** | rounds: {cpu_rounds} | | | | "
                     f"{max(s['peak_rss_mib']['ours']) / max(s['peak_rss_mib']['trl']):.2f}x |")
    for variant, s in summary.items():
        for side, phases, labels, step in (("Our", s["ours_phases_s"], OUR_PHASES, s["ours_step_s"]),
                                           ("TRL's", s["trl_phases_s"], TRL_PHASES, s["trl_step_s"])):
            total = step["median"]
            lines += ["", f"{side} step by phase ({variant}; wall medians over timed steps, share of the median "
                      "step):", "", "| phase | median s | IQR s | share |", "|---|---|---|---|"]
            for key, label in labels:
                d = phases[key]
                if d.get("n"):
                    lines.append(f"| {label} | {d['median']:.4f} | {d['iqr']:.4f} "
                                 f"| {100 * d['median'] / total:.0f}% |")
            lines.append(f"| whole step | {total:.4f} | {step['iqr']:.4f} | 100% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "grpo_vs_trl.json"))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved (ours, TRL) pairs per variant")
    ap.add_argument("--variants", default="full,lora", help=f"comma list of {VARIANTS}")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every-n-steps", type=int, default=1,
                    help="our Trainer's logging interval (1 = TRL's logging_steps=1; Lightning's default is 50)")
    ap.add_argument("--model-dir", default=None, help="a Qwen2.5-VL folder (default: build the tiny one)")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="grpo-bench-model-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from medloc_lightning.policies.qwen_tiny import tiny_qwen_path

            model_dir = str(tiny_qwen_path(cache_dir=tmp))
        runs: list[dict[str, Any]] = []
        started = time.time()
        for variant in variants:
            settings = BenchSettings(model_dir=model_dir, variant=variant, warmup=args.warmup, steps=args.steps,
                                     threads=args.threads, log_every_n_steps=args.log_every_n_steps)
            for round_index in range(args.rounds):
                for side in ("ours", "trl"):
                    result = run_side(side, settings)
                    result.update(variant=variant, round=round_index)
                    runs.append(result)
                    print(f"[{variant} round {round_index}] {side}: median {result['step_s']['median']:.3f} s/step, "
                          f"peak RSS {result['peak_rss_mib']:.0f} MiB, load {result['loadavg_before'][0]:.2f}"
                          f"->{result['loadavg_after'][0]:.2f}", flush=True)
    summary = {v: summarize_variant([r for r in runs if r["variant"] == v and r["side"] == "ours"],
                                    [r for r in runs if r["variant"] == v and r["side"] == "trl"]) for v in variants}
    table = markdown(summary)
    loads = [r["loadavg_before"][0] for r in runs] + [r["loadavg_after"][0] for r in runs]
    env = environment()
    report = {
        "command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
        "settings": {k: v for k, v in settings.to_dict().items() if k not in ("model_dir", "variant")},
        "variants": variants, "rounds": args.rounds, "wall_s": time.time() - started,
        "environment": env, "loadavg_1min": {"min": min(loads), "max": max(loads)},
        "summary": summary, "table_markdown": table, "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print()
    print(f"torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}, lightning {env['lightning']}; "
          f"nproc {env['nproc']}; 1-min load during the run {min(loads):.2f}-{max(loads):.2f}")
    print(table)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
