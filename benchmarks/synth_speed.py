"""Speed of the synthetic generator (target: 1,000 images of 224 px in under 30 s on 2 cores).

Also reports, per preset, how often a uniformly random box reaches IoU 0.5 / 0.3 with the ground truth,
which is how "hard" the data is for a policy that has learned nothing.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.synth_speed --n 1000 --size 224 --workers 2
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from medloc_lightning.data.synth import PRESETS, SPLITS, SynthConfig, generate


def random_box_hit_rates(boxes: np.ndarray, size: int, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Fraction of uniform random boxes (corners uniform in the image) with IoU >= 0.3 / 0.5 per GT box."""
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, size, (len(boxes), draws, 4))
    pred = np.concatenate([np.minimum(corners[..., :2], corners[..., 2:]),
                           np.maximum(corners[..., :2], corners[..., 2:])], axis=-1)
    gt = boxes[:, None, :]
    iw = np.clip(np.minimum(pred[..., 2], gt[..., 2]) - np.maximum(pred[..., 0], gt[..., 0]), 0, None)
    ih = np.clip(np.minimum(pred[..., 3], gt[..., 3]) - np.maximum(pred[..., 1], gt[..., 1]), 0, None)
    inter = iw * ih
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    iou = inter / (area(pred) + area(gt) - inter)
    return {"iou>=0.3": float((iou >= 0.3).mean()), "iou>=0.5": float((iou >= 0.5).mean())}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_boxes(out: Path) -> np.ndarray:
    return np.array([json.loads(line)["bbox"] for s in SPLITS for line in (out / f"{s}.jsonl").open()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modality", default="mixed")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--hardness-n", type=int, default=300, help="images per preset for the random-box rates")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        counts = generate(Path(tmp) / "speed", n=args.n, seed=0, modality=args.modality, size=args.size,
                          config=SynthConfig.preset(args.preset), workers=args.workers)
        total = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
        print(f"synth {args.preset} {args.modality} {args.size}px workers={args.workers}: {args.n} images in "
              f"{total:.2f} s = {args.n / total:.1f} images/s  (splits {counts})")
        # On a shared box wall time includes other load; CPU time / workers is the idle-machine estimate.
        print(f"CPU time {cpu:.2f} s = {1000 * cpu / max(args.n, 1):.1f} ms/image; on {args.workers} idle "
              f"core(s) about {cpu / args.workers:.1f} s for {args.n} images")

        for name in sorted(PRESETS):
            out = Path(tmp) / name
            generate(out, n=args.hardness_n, seed=1, size=args.size, config=PRESETS[name], workers=args.workers)
            boxes = load_boxes(out)
            rel = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / args.size
            rates = random_box_hit_rates(boxes, args.size)
            print(f"preset {name:8s} sqrt(box area)/side median {np.median(rel):.3f} | random box: "
                  + ", ".join(f"P({k}) = {v:.4f}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
