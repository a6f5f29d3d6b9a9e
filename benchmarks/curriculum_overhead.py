"""µs per curriculum `observe()` (64 IoUs, window 30) and per `GroundingMetrics.update` (64 boxes).

The paper promises zero overhead; the goal is < 100 µs each on a 2-core CPU.
Run: OMP_NUM_THREADS=1 python -m benchmarks.curriculum_overhead [--repeats 5] [--iters 2000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from medloc_lightning.curriculum import FixedThreshold, ThresholdCurriculum
from medloc_lightning.metrics import GroundingMetrics


def _time(fn, iters: int, repeats: int) -> list[float]:
    for _ in range(min(iters, 200)):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t0) / iters * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)

    # IoUs that keep the curriculum moving, so raises and window refreshes are part of the timing
    stream = [torch.rand(64, generator=g) * 0.2 + 0.8 for _ in range(1024)]
    curriculum = ThresholdCurriculum(window=30)
    fixed = FixedThreshold(0.5, window=30)
    i = [0]

    def observe(schedule):
        def step():
            schedule.observe(stream[i[0] % 1024])
            i[0] += 1
        return step

    target = torch.tensor([[20.0, 30.0, 120.0, 140.0]]).repeat(64, 1)
    preds = target + torch.randn(64, 4, generator=g) * 10
    preds[::8] = float("nan")  # some unparsed answers
    metric = GroundingMetrics()

    rows = [
        ("ThresholdCurriculum.observe (64 IoUs, window 30)", _time(observe(curriculum), args.iters, args.repeats)),
        ("FixedThreshold.observe (64 IoUs, window 30)", _time(observe(fixed), args.iters, args.repeats)),
        ("GroundingMetrics.update (64 boxes)", _time(lambda: metric.update(preds, target), args.iters, args.repeats)),
        ("ThresholdCurriculum.stats", _time(lambda: curriculum.stats, args.iters, args.repeats)),
    ]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.repeats} repeats x {args.iters} calls")
    print(f"| operation | median µs/call | min | max |\n|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {statistics.median(t):.1f} | {min(t):.1f} | {max(t):.1f} |")
    print(f"(curriculum raised tau {curriculum.num_raises} times during the run; final tau {curriculum.tau})")


if __name__ == "__main__":
    main()
