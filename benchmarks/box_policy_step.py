"""Milliseconds per GRPO step of BoxPolicy through a real Lightning Trainer, with the phase split.

The quickstart's settings: B = 8 prompts x G = 8 boxes, image side 128, `lab` synthetic data cached in memory,
MedLoc curriculum callback, one CPU thread.
Run: OMP_NUM_THREADS=1 python -m benchmarks.box_policy_step [--steps 300] [--warmup 30] [--data data/lab]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
import warnings
from collections import defaultdict
from typing import Any, Callable

import lightning.pytorch as pl
import torch

from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback
from medloc_lightning.curriculum import ThresholdCurriculum
from medloc_lightning.lab import lab_data
from medloc_lightning.module import GRPOGroundingModule
from medloc_lightning.policies.box import BoxPolicy


class StepClock(pl.Callback):
    """Wall time of each training step: the whole loop (batch end to batch end) and the step itself."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.loop: list[float] = []
        self.step: list[float] = []
        self._start = self._last_end = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.step.append(now - self._start)
            self.loop.append(now - self._last_end)
        self._last_end = now


def timed(fn: Callable, sink: list[float]) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--data", default="data/lab")
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = lab_data(args.data)
    policy = BoxPolicy(image_size=args.image_size, seed=0)
    module = GRPOGroundingModule(policy, num_generations=8, temperature=1.0, learning_rate=2e-3, max_grad_norm=1.0,
                                 micro_batch_size=64)
    phases: dict[str, list[float]] = defaultdict(list)
    policy.sample = timed(policy.sample, phases["policy.sample"])  # type: ignore[method-assign]
    policy.logprobs = timed(policy.logprobs, phases["policy.logprobs (with graph)"])  # type: ignore[method-assign]
    module._optimize = timed(module._optimize, phases["logprobs + loss + backward + clip + Adam"])  # type: ignore
    module._log_step = timed(module._log_step, phases["_log_step"])  # type: ignore[method-assign]
    clock = StepClock(args.warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.warmup + args.steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=50,
                         callbacks=[ThresholdCurriculumCallback(ThresholdCurriculum(), prog_bar=False), clock])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    q = lambda xs: [1e3 * v for v in statistics.quantiles(xs, n=4)]  # noqa: E731
    print(f"{args.steps} timed steps after {args.warmup} warm-up, image {args.image_size} px, B 8 x G 8, 1 thread")
    print(f"| what | median ms | q1-q3 ms |\n|---|---|---|")
    print(f"| whole loop (batch end to batch end: data, hooks, step, callbacks) | {ms(clock.loop):.1f} | "
          f"{q(clock.loop)[0]:.1f}-{q(clock.loop)[2]:.1f} |")
    print(f"| training step (batch start to batch end) | {ms(clock.step):.1f} | "
          f"{q(clock.step)[0]:.1f}-{q(clock.step)[2]:.1f} |")
    for name, values in phases.items():
        values = values[-args.steps:]
        if values:
            print(f"| {name} | {ms(values):.1f} | {q(values)[0]:.1f}-{q(values)[2]:.1f} |")
    print(f"steps/s (whole loop): {1 / statistics.median(clock.loop):.1f}; tau at the end {module.iou_threshold:.2f}")


if __name__ == "__main__":
    main()
