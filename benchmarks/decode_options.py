"""Per-token decoding overhead of HF ``generate`` on the tiny grounding prior: the options transformers offers.

Options (each a full rollout ``generate`` of B prompts x G samples x exactly N new tokens, as the policy runs
it: train mode without dropout, our `GenerationConfig`):
- ``plain``: ``generate(num_return_sequences=G)`` under ``torch.no_grad()`` (transformers' default path);
- ``prefill_once``: the prompts prefilled once and their cache repeated (`qwen_prefill`, the policy default);
- ``plain_static``: ``cache_implementation="static"`` (a preallocated cache, the torch.compile route);
- ``plain_inference_mode`` / ``prefill_once_inference_mode``: ``torch.inference_mode()`` instead of ``no_grad``.
Every option is checked to draw the same ids as ``plain`` from the same seed (the distribution unchanged).

Reported per option: wall and process-CPU seconds per generate call and per decoding step (median over
interleaved repeats), and Python function calls per decoding step by source file (deterministic, from one
profiled call). The logits processors (suppressed vision tokens, temperature) and stopping criteria (EOS,
max length) our configuration builds are listed too.

Run: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.decode_options [--model-dir DIR] [--repeats 20]
     [--calls-only] [--out benchmarks/results/decode_options.json]
"""
from __future__ import annotations

import argparse
import cProfile
import collections
import contextlib
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks._grpo_bench_common import (
    BenchSettings,
    configure_threads,
    describe,
    environment,
    make_records,
    resolve_model_dir,
)

OPTIONS = ("plain", "prefill_once", "plain_static", "plain_inference_mode", "prefill_once_inference_mode")


def build(s: BenchSettings) -> tuple[Any, dict[str, Any]]:
    """The policy (full model) and its encoded prompts."""
    from medloc_lightning.policies.qwen import QwenVLPolicy

    policy = QwenVLPolicy(s.model_dir, min_pixels=s.min_pixels, max_pixels=s.pixels, prompt_template=s.prompt_template,
                          max_new_tokens=s.new_tokens)
    policy.configure()
    enc = policy.encode(make_records(s.prompts, s.image_size, s.seed, s.records), s.new_tokens)
    return policy, enc.prompts


def generator(policy: Any, prompts: dict[str, Any], s: BenchSettings, option: str) -> Callable[[int], Any]:
    """A function of the seed that runs one rollout ``generate`` with ``option``; returns the sequences."""
    import torch

    from medloc_lightning.policies.qwen.model import train_mode_without_dropout
    from medloc_lightning.policies.qwen.prefill import generate_with_shared_prefill

    config = policy.generation_config(do_sample=True, temperature=s.temperature, num_return_sequences=s.generations)
    config.min_new_tokens = s.new_tokens
    if option.endswith("_static"):
        config.cache_implementation = "static"
    grad_off = torch.inference_mode if option.endswith("_inference_mode") else torch.no_grad

    def run(seed: int) -> Any:
        torch.manual_seed(seed)
        with grad_off(), train_mode_without_dropout(policy.model):
            if option.startswith("prefill_once"):
                out = generate_with_shared_prefill(policy.model, prompts, config)
            else:
                out = policy.model.generate(**prompts, generation_config=config)
        return out.clone()

    return run


def python_calls_by_file(run: Callable[[int], Any], tokens: int) -> dict[str, float]:
    """Python function calls per decoding step, grouped by source file (one profiled call)."""
    profile = cProfile.Profile()
    profile.enable()
    run(0)
    profile.disable()
    by_file: collections.Counter[str] = collections.Counter()
    for (path, _, _), (_, calls, *_rest) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        parts = Path(path).parts
        key = "/".join(parts[-2:]) if path.startswith("/") else path
        by_file[key] += calls
    total = sum(by_file.values())
    top = {k: round(v / tokens, 1) for k, v in by_file.most_common(15)}
    return {"total": round(total / tokens, 1), **top}


def processors(policy: Any, run: Callable[[int], Any]) -> dict[str, list[str]]:
    """The logits processors and stopping criteria ``generate`` builds from our config (recorded in a run)."""
    from medloc_lightning.policies.qwen.model import base_model

    model = base_model(policy.model)
    seen: dict[str, list[str]] = {}
    for name, key in (("_get_logits_processor", "logits_processors"), ("_get_stopping_criteria", "stopping_criteria")):
        original = getattr(model, name)

        def recorded(*args: Any, _original: Any = original, _key: str = key, **kwargs: Any) -> Any:
            built = _original(*args, **kwargs)
            seen[_key] = [type(p).__name__ for p in built]
            return built

        setattr(model, name, recorded)
    try:
        run(0)
    finally:
        for name in ("_get_logits_processor", "_get_stopping_criteria"):
            delattr(model, name)
    return seen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None, help="default: the shipped tiny grounding prior")
    ap.add_argument("--options", default=",".join(OPTIONS), help=f"comma list of {OPTIONS}")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per option, interleaved")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--records", default="synth:single")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls-only", action="store_true", help="exactness and call counts only, no timing")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "decode_options.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_threads(args.threads)
    options = [o for o in args.options.split(",") if o]
    if unknown := set(options) - set(OPTIONS):
        ap.error(f"unknown options {sorted(unknown)}; choose from {OPTIONS}")
    import torch

    with tempfile.TemporaryDirectory(prefix="decode-options-") as tmp:
        model_dir, kind = resolve_model_dir(args.model_dir, tmp)
        s = BenchSettings(model_dir=model_dir, prompts=args.prompts, generations=args.generations,
                          new_tokens=args.new_tokens, image_size=args.image_size, records=args.records,
                          threads=args.threads)
        policy, prompts = build(s)
        runs = {o: generator(policy, prompts, s, o) for o in ["plain", *options]}
        reference = runs["plain"](1)
        results: dict[str, Any] = {o: {"same_ids_as_plain": bool(torch.equal(runs[o](1), reference))} for o in options}
        per_call_tokens = args.new_tokens  # decoding steps per call (each step samples B x G tokens)
        for o in options:
            results[o]["python_calls_per_step"] = python_calls_by_file(runs[o], per_call_tokens)
        if not args.calls_only:
            for _ in range(args.warmup):
                for o in options:
                    runs[o](0)
            walls: dict[str, list[float]] = {o: [] for o in options}
            cpus: dict[str, list[float]] = {o: [] for o in options}
            for i in range(args.repeats):
                for o in options[i % len(options):] + options[:i % len(options)]:  # rotate the order
                    start = (time.perf_counter(), time.process_time())
                    runs[o](i)
                    walls[o].append(time.perf_counter() - start[0])
                    cpus[o].append(time.process_time() - start[1])
            for o in options:
                wall, cpu = describe(walls[o]), describe(cpus[o])
                results[o].update(wall_s=wall, cpu_s=cpu, wall_ms_per_step=1e3 * wall["median"] / per_call_tokens,
                                  cpu_ms_per_step=1e3 * cpu["median"] / per_call_tokens)
            if "plain" in options:
                plain = results["plain"]
                for o in options:
                    results[o]["cpu_over_plain"] = results[o]["cpu_s"]["median"] / plain["cpu_s"]["median"]
                    results[o]["wall_over_plain"] = results[o]["wall_s"]["median"] / plain["wall_s"]["median"]
        command = " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
        report = {"command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python " + command,
                  "model": {"dir": model_dir, "kind": kind}, "settings": s.to_dict(),
                  "rows": args.prompts * args.generations, "prompt_length": int(prompts["input_ids"].shape[1]),
                  "configuration": processors(policy, runs["plain"]), "environment": environment(),
                  "results": results}
    lines = ["| option | same ids as plain | wall ms / step | CPU ms / step | CPU / plain | Python calls / step |",
             "|---|---|---|---|---|---|"]
    for o, r in results.items():
        timing = "– | – | –"
        if "wall_s" in r:
            timing = f"{r['wall_ms_per_step']:.2f} | {r['cpu_ms_per_step']:.2f} | {r.get('cpu_over_plain', 0):.2f}" 
        lines.append(f"| {o} | {r['same_ids_as_plain']} | {timing} | {r['python_calls_per_step']['total']} |")
    report["table_markdown"] = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"model {model_dir} ({kind}); prompt length {report['prompt_length']}; {report['configuration']}")
    print(report["table_markdown"])
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
