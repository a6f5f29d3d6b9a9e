"""Shared pieces of the GRPO-step benchmarks (ours vs TRL): settings, records, timers and statistics.

Both sides read one `BenchSettings`, train on the same records and report through `StepRecorder` and the
same phase names (`PHASES`), so the only difference between the runs is the trainer under test.
"""
from __future__ import annotations

import dataclasses
import tempfile
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from medloc_lightning.pretrained import shipped_path
from medloc_lightning.prior import PRIOR_DIMS, PRIOR_PROMPT_TEMPLATE

VARIANTS = ("full", "lora")
"""``full``: full fine-tune, beta=0. ``lora``: LoRA r=8 on q/k/v/o, beta=0.04 (reference = adapters off)."""

SIDES = ("ours", "ours_plain", "trl")
"""``ours``: `GRPOGroundingModule` with the default prefill-once policy; ``ours_plain``: the same with
``prefill_once=False`` (transformers' plain ``num_return_sequences`` path); ``trl``: TRL's ``GRPOTrainer``."""

PHASES = (("prefill_s", "prefill: forward over the prompt tokens in generation"),
          ("decode_s", "decode: the rest of generate (one token per step)"),
          ("reference_s", "reference: no-grad log-prob passes"),
          ("logprobs_s", "log-probs: policy forward with gradients + loss"),
          ("backward_s", "backward + clip + AdamW"),
          ("other_s", "other: prompts, text, reward, loop, logging (step - phases)"))
"""The phases each side reports, in wall seconds (``cpu_<name>`` in process CPU seconds)."""

SHIPPED_PRIOR = "medloc:tiny-qwen2.5-vl-grounding"
"""The shipped tiny grounding prior (the benchmark's default model); a random model of its architecture
(`medloc_lightning.prior.PRIOR_DIMS`) stands in where the folder is absent."""


@dataclass(frozen=True)
class BenchSettings:
    """One side's run; identical for every side apart from ``side``."""

    model_dir: str
    variant: str = "full"
    prompts: int = 2
    generations: int = 8
    new_tokens: int = 33
    image_size: int = 84
    records: str = "synth:single"
    """``synth:<preset>`` (synthetic grounding images, the prior's domain) or ``noise`` (random pixels)."""
    prompt_template: str = PRIOR_PROMPT_TEMPLATE
    temperature: float = 0.9
    warmup: int = 3
    steps: int = 12
    loss_type: str = "grpo"
    learning_rate: float = 1e-6
    tau: float = 0.3
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    lora_r: int = 8
    log_every_n_steps: int = 1
    """Our Trainer's logging interval; 1 matches TRL's ``logging_steps=1`` (Lightning's default is 50)."""
    max_pixels: int | None = None
    """The processor's pixel cap (default: ``image_size`` squared)."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.warmup < 1 or self.steps < 1:
            raise ValueError(f"need warmup >= 1 and steps >= 1, got {self.warmup}, {self.steps}")
        if self.records != "noise" and not self.records.startswith("synth:"):
            raise ValueError(f"records must be 'noise' or 'synth:<preset>', got {self.records!r}")

    @property
    def beta(self) -> float:
        return 0.04 if self.variant == "lora" else 0.0

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def pixels(self) -> int:
        return self.max_pixels or self.image_size * self.image_size

    @property
    def min_pixels(self) -> int:
        return min(56 * 56, self.pixels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def configure_threads(threads: int) -> None:
    """Pin torch's intra-op threads (call after ``OMP_NUM_THREADS`` is set in the environment)."""
    import torch

    torch.set_num_threads(threads)


def resolve_model_dir(model_dir: str | None, cache_dir: str) -> tuple[str, str]:
    """The model folder to benchmark and what it is: ``model_dir`` when given; else the shipped prior; else
    (the folder absent) a random model of the prior's dimensions, built in ``cache_dir``."""
    if model_dir is not None:
        return model_dir, "given"
    shipped = shipped_path(SHIPPED_PRIOR)
    if (shipped / "config.json").is_file():
        return str(shipped), "shipped prior"
    from medloc_lightning.policies.qwen.tiny import tiny_qwen_path

    return str(tiny_qwen_path(cache_dir=cache_dir, **PRIOR_DIMS, min_pixels=84 * 84, max_pixels=84 * 84)), \
        "random stand-in with the prior's dimensions (shipped prior absent: rewards will be zero)"


def make_records(count: int, size: int, seed: int = 0, kind: str = "noise") -> list[dict[str, Any]]:
    """``count`` grounding records of ``size``-px images with one box each (original pixels): synthetic
    scenes (``synth:<preset>``, what the prior was trained for) or noise images (``noise``)."""
    import numpy as np
    from PIL import Image

    if kind.startswith("synth:"):
        from medloc_lightning.data.synth import SynthConfig, make_record

        config = SynthConfig.preset(kind.split(":", 1)[1])
        out = []
        for i in range(count):
            record, pixels = make_record(i, seed, "mixed", size, config)
            record = {k: record[k] for k in ("id", "query", "bbox", "width", "height")}
            out.append({**record, "image": Image.fromarray(pixels).convert("RGB")})
        return out
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        x1, y1 = (int(v) for v in rng.integers(0, size // 2, size=2))
        x2, y2 = x1 + size // 3, y1 + size // 4
        out.append({"id": f"bench-{i}", "image": Image.fromarray(pixels, "RGB"), "query": "lesion",
                    "bbox": [float(x1), float(y1), float(x2), float(y2)], "width": size, "height": size})
    return out


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def describe(values: list[float]) -> dict[str, float]:
    """Median, quartiles, IQR, mean, min, max and count of ``values``."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"n": len(ordered), "median": statistics.median(ordered), "q1": q1, "q3": q3, "iqr": q3 - q1,
            "mean": statistics.fmean(ordered), "min": ordered[0], "max": ordered[-1]}


class CallTimer:
    """Wraps a bound method (e.g. ``model.generate``) on its instance and sums the wall and process-CPU time
    of its calls; ``active`` (checked per call) limits what counts, ``probe`` sees each call's arguments
    and result, and ``depth`` is > 0 while a call is running (for timers scoped to it)."""

    def __init__(self, owner: Any, name: str, sync: Callable[[], None] | None = None,
                 probe: Callable[[tuple, dict, Any], None] | None = None,
                 active: Callable[[], bool] | None = None) -> None:
        self.wall = self.cpu = 0.0
        self.calls = 0
        self.depth = 0
        original = getattr(owner, name)
        sync = sync or (lambda: None)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if active is not None and not active():
                return original(*args, **kwargs)
            sync()
            start = (time.perf_counter(), time.process_time())
            self.depth += 1
            try:
                result = original(*args, **kwargs)
                sync()
            finally:
                self.depth -= 1
            self.wall += time.perf_counter() - start[0]
            self.cpu += time.process_time() - start[1]
            self.calls += 1
            if probe is not None:
                probe(args, kwargs, result)
            return result

        setattr(owner, name, timed)

    def take(self) -> tuple[float, float]:
        """Wall and CPU seconds spent since the last ``take`` (and reset)."""
        value = (self.wall, self.cpu)
        self.wall = self.cpu = 0.0
        return value


def combine(first: tuple[float, float], *rest: tuple[float, float], sign: int = 1) -> tuple[float, float]:
    """(wall, cpu) of ``first`` plus (``sign=1``) or minus (``sign=-1``) each of ``rest``."""
    return (first[0] + sign * sum(r[0] for r in rest), first[1] + sign * sum(r[1] for r in rest))


def phase_row(times: dict[str, tuple[float, float]], step: tuple[float, float] | None = None) -> dict[str, float]:
    """Per-step extras from ``{phase: (wall, cpu)}``: ``<phase>`` wall and ``cpu_<phase>``; with the step's
    own (wall, cpu), ``other_s`` is what the phases leave of it."""
    row: dict[str, float] = {}
    for key, (wall, cpu) in times.items():
        row[key], row[f"cpu_{key}"] = wall, cpu
    if step is not None:
        timed = [k for k, _ in PHASES if k != "other_s" and k in times]
        row["other_s"] = step[0] - sum(times[k][0] for k in timed)
        row["cpu_other_s"] = step[1] - sum(times[k][1] for k in timed)
    return row


def generate_probe(calls: list[dict[str, int]]) -> Callable[[tuple, dict, Any], None]:
    """A `CallTimer` probe for ``generate``: rows, prompt length and new tokens of each call."""
    def probe(args: tuple, kwargs: dict, result: Any) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        calls.append({"input_rows": int(ids.shape[0]), "output_rows": int(result.shape[0]),
                      "prompt_len": int(ids.shape[1]),
                      "new_tokens": int(result.shape[1] - ids.shape[1])})
    return probe


class StepRecorder:
    """Wall and process-CPU time between consecutive optimizer-step ends, plus per-step extras; warm-up
    steps dropped. CPU time is the steadier figure on a shared machine: waiting for a core is not in it."""

    def __init__(self, warmup: int, sync: Callable[[], None] | None = None) -> None:
        self.warmup = warmup
        self.sync = sync or (lambda: None)
        self.step = 0
        self._last: tuple[float, float] | None = None
        self.step_times: list[float] = []
        self.cpu_times: list[float] = []
        self.extras: list[dict[str, float]] = []

    def step_end(self, phases: dict[str, tuple[float, float]] | None = None,
                 extras: dict[str, float] | None = None) -> None:
        """Close a step: its wall and CPU time, its ``phases`` ((wall, cpu) each, see `phase_row`) and
        ``extras``."""
        self.sync()
        now = (time.perf_counter(), time.process_time())
        self.step += 1
        if self.step > self.warmup and self._last is not None:
            step = (now[0] - self._last[0], now[1] - self._last[1])
            self.step_times.append(step[0])
            self.cpu_times.append(step[1])
            self.extras.append({**(phase_row(phases, step) if phases else {}), **(extras or {})})
        self._last = now

    def summary(self) -> dict[str, Any]:
        keys = sorted({k for e in self.extras for k in e})
        return {"step_s": describe(self.step_times), "cpu_step_s": describe(self.cpu_times),
                "step_times": self.step_times, "cpu_times": self.cpu_times,
                "extras": {k: describe([e[k] for e in self.extras if k in e]) for k in keys},
                "per_step": self.extras, "timed_steps": len(self.step_times)}


def cuda_sync(device: str) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device (so timers see finished kernels), else None."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.synchronize


def environment() -> dict[str, Any]:
    """Library versions, CPU count and load average, for the results file."""
    import importlib.metadata as md
    import platform

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "machine": platform.machine(), "nproc": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "loadavg": list(os.getloadavg()),
            **{name: version(name) for name in ("torch", "transformers", "trl", "lightning", "peft",
                                                "accelerate", "tokenizers", "datasets")}}


def run_side(side: str, settings: BenchSettings, timeout: float = 1800) -> dict[str, Any]:
    """Run one side (one of `SIDES`) in a fresh interpreter, so its peak RSS and import state
    are its own; returns the worker's result with the load average before and after."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]  # the worker runs as `python -m benchmarks._grpo_bench_worker`
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads), MKL_NUM_THREADS=str(settings.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        load_before = list(os.getloadavg())
        proc = subprocess.run([sys.executable, "-m", "benchmarks._grpo_bench_worker", side,
                               json.dumps(settings.to_dict()), str(result_path)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"{side} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(result_path.read_text())
    result["loadavg_before"], result["loadavg_after"] = load_before, list(os.getloadavg())
    return result
