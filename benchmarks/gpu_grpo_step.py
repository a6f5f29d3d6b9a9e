"""GPU GRPO step: ours (Lightning; prefill once per prompt, and the plain path) vs TRL ``GRPOTrainer`` on (a) the
tiny model and (b) a real Qwen2.5-VL checkpoint (``--checkpoint DIR``) or, without one, the Qwen2.5-VL-3B
architecture with random weights; bf16, 2 prompts x G=8 completions x 64 new tokens, 448 px synthetic images.

Records per model and side: step time (median, IQR), the phases (prefill, decode, reference, log-probs,
backward), rollout tokens/s (completion tokens / time in ``model.generate``), peak GPU memory
(``torch.cuda.max_memory_allocated``) and the card's name. Fully offline: the checkpoint is a local folder
(``huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR`` beforehand), the random 3B folder is
built here from the public config (``_grpo_bench_models.py``). Each (model, side) runs in its own
interpreter; a failing one is recorded with its error and the rest still run. TRL needs ``trl`` and
``datasets`` importable; without them the TRL rows are recorded as skipped (docs/gpu.md gives the versions to
install).

Run on a GPU machine:  python -m benchmarks.gpu_grpo_step --checkpoint /models/qwen2.5-vl-3b
CPU smoke test:        python -m benchmarks.gpu_grpo_step --device cpu --tiny-only --warmup 1 --steps 2
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks._grpo_bench_common import BenchSettings, environment, run_side

from medloc_lightning.parsing import DEFAULT_PROMPT_TEMPLATE


def missing_for_trl() -> list[str]:
    """The packages TRL's side needs that this interpreter cannot import."""
    return [name for name in ("trl", "datasets", "peft") if importlib.util.find_spec(name) is None]


def row(model: str, side: str, result: dict[str, Any], params: int) -> dict[str, Any]:
    """One table row: step time, rollout tokens/s, peak GPU memory."""
    calls = result["generate_calls"]
    rows = calls[0]["output_rows"] if calls else 0
    length = result["extras"].get("completion_length", {}).get("median", float("nan"))
    generate = result["extras"].get("generate_s", {}).get("median", float("nan"))
    return {"model": model, "side": side, "params": params, "step_s": result["step_s"],
            "generate_s": generate, "completion_tokens_per_step": rows * length,
            "rollout_tokens_per_s": rows * length / generate if generate else None,
            "peak_gpu_mib": result.get("peak_gpu_mib"), "peak_rss_mib": result["peak_rss_mib"],
            "device_name": result.get("device_name"), "prompt_len": calls[0]["prompt_len"] if calls else None,
            "phases_s": {k: v["median"] for k, v in result["extras"].items() if k.endswith("_s") and "median" in v}}


def markdown(rows: list[dict[str, Any]]) -> str:
    phases = ("prefill_s", "decode_s", "reference_s", "logprobs_s", "backward_s")
    head = " | ".join(p[:-2] + " s" for p in phases)
    lines = [f"| model | side | params | prompt tokens | step s (median) | IQR s | {head} | rollout tok/s "
             "| peak GPU MiB | peak RSS MiB |", "|---|---|---|---|---|---|" + "---|" * (len(phases) + 3)]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['model']} | {r['side']} | | | {r.get('skipped') or 'FAILED: ' + r['error'][:80]} |"
                         + " |" * (len(phases) + 4))
            continue
        gpu = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "-"
        split = " | ".join(f"{r['phases_s'].get(p, float('nan')):.3f}" for p in phases)
        lines.append(f"| {r['model']} | {r['side']} | {r['params'] / 1e6:.1f} M | {r['prompt_len']} "
                     f"| {r['step_s']['median']:.3f} | {r['step_s']['iqr']:.3f} | {split} "
                     f"| {r['rollout_tokens_per_s']:.0f} | {gpu} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "gpu_grpo_step.json"))
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    ap.add_argument("--checkpoint", default=None,
                    help="a local Qwen2.5-VL folder (e.g. Qwen2.5-VL-3B-Instruct) instead of the random 3B weights")
    ap.add_argument("--tiny-only", action="store_true", help="skip the second model")
    ap.add_argument("--smoke-3b", action="store_true",
                    help="a one-layer narrow 3B-vocab model instead of the real 3B sizes (CPU smoke test)")
    ap.add_argument("--sides", default="ours,ours_plain,trl")
    ap.add_argument("--image-size", type=int, default=448, help="synthetic image side (448 px: 256 image tokens)")
    ap.add_argument("--max-pixels", type=int, default=None, help="processor cap (default: image size squared)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--dtype", default=None, help="bfloat16 (default on cuda) or float32 (default on cpu)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per (model, side) run at most")
    ap.add_argument("--budget", type=float, default=540,
                    help="seconds for the whole script: later runs are skipped (and recorded so) once it is spent")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False (use --device cpu for a smoke test)")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    threads = 1 if args.device == "cpu" else max(1, min(8, os.cpu_count() or 1))
    sides = [s for s in args.sides.split(",") if s]
    started = time.time()
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    settings_used: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="gpu-grpo-bench-") as tmp:
        from benchmarks._grpo_bench_models import build_qwen2_5_vl_3b, parameter_count
        from medloc_lightning.policies.qwen.tiny import tiny_qwen_path

        pixels = args.max_pixels or args.image_size ** 2
        models = [("tiny", lambda: tiny_qwen_path(cache_dir=tmp, max_pixels=max(pixels, 56 * 56)))]
        if args.checkpoint and not args.tiny_only:
            models.append((Path(args.checkpoint).name, lambda: args.checkpoint))
        elif not args.tiny_only:
            name = "3b-arch-smoke" if args.smoke_3b else "qwen2.5-vl-3b-arch"
            models.append((name, lambda: build_qwen2_5_vl_3b(Path(tmp) / name, device=args.device, dtype=dtype,
                                                             smoke=args.smoke_3b, max_pixels=pixels)))
        for model_name, build in models:
            clock = time.perf_counter()
            try:
                model_dir = str(build())
            except Exception as err:  # record and go on: one failure does not cost the other models' rows
                rows += [{"model": model_name, "side": s, "error": f"build: {err!r}"} for s in sides]
                notes.append(traceback.format_exc())
                continue
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            params = parameter_count(model_dir)
            print(f"[{model_name}] built in {time.perf_counter() - clock:.1f} s, {params / 1e6:.1f} M params",
                  flush=True)
            settings = BenchSettings(model_dir=model_dir, variant="full", generations=args.generations,
                                     new_tokens=args.new_tokens, image_size=args.image_size, max_pixels=pixels,
                                     prompt_template=DEFAULT_PROMPT_TEMPLATE, warmup=args.warmup, steps=args.steps,
                                     device=args.device, dtype=dtype, threads=threads)
            settings_used = {k: v for k, v in settings.to_dict().items() if k != "model_dir"}
            for side in sides:
                if side == "trl" and missing_for_trl():
                    rows.append({"model": model_name, "side": side,
                                 "skipped": f"not importable: {', '.join(missing_for_trl())}"})
                    continue
                remaining = args.budget - (time.time() - started)
                if remaining < 30:
                    rows.append({"model": model_name, "side": side, "skipped": "time budget spent"})
                    continue
                clock = time.perf_counter()
                try:
                    result = run_side(side, settings, timeout=min(args.timeout, remaining))
                except Exception as err:
                    rows.append({"model": model_name, "side": side, "error": repr(err)[-2000:]})
                    print(f"[{model_name}] {side} FAILED: {err!r}"[:3000], flush=True)
                    continue
                result.update(model=model_name)
                runs.append(result)
                rows.append(row(model_name, side, result, params))
                print(f"[{model_name}] {side}: {result['step_s']['median']:.3f} s/step, "
                      f"{rows[-1]['rollout_tokens_per_s']:.0f} rollout tok/s, peak GPU "
                      f"{result.get('peak_gpu_mib') or 0:.0f} MiB ({time.perf_counter() - clock:.0f} s)", flush=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    for model_name in dict.fromkeys(r["model"] for r in rows):
        ok = {r["side"]: r for r in rows if r["model"] == model_name and "step_s" in r}
        if {"ours", "trl"} <= set(ok):
            notes.append(f"{model_name}: ours/TRL step-time ratio "
                         f"{ok['ours']['step_s']['median'] / ok['trl']['step_s']['median']:.2f}")
    table = markdown(rows)
    report = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "device": device_name, "dtype": dtype, "settings": settings_used,
              "environment": environment(), "wall_s": time.time() - started, "rows": rows, "notes": notes,
              "table_markdown": table, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\ndevice: {device_name}, dtype {dtype}\n{table}")
    for note in notes:
        print(note)
    print(f"\nwrote {out} in {report['wall_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
