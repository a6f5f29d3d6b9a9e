"""Paired comparisons of two methods on the same images and seeds: the statistics behind every verdict table.

A run's result is one IoU per test image (0 for an unparsed answer). Every reported metric is a mean of
per-image scores: Acc@t of 1[IoU ≥ t], mIoU of the IoU, and pseudo-mAP of the fraction of the ten thresholds
0.50:0.05:0.95 the IoU reaches (the mean over images of that fraction is the mean of the ten Acc@t). So a
difference between two methods is the mean of a matrix D[seed, image] of per-image score differences, and
its 95% interval comes from a two-way bootstrap that resamples seeds and images together, the pairing kept:
one draw picks seeds and images with replacement and both methods are read at the same (seed, image) cells.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

METRICS: tuple[str, ...] = ("acc@0.5", "acc@0.75", "pseudo_map", "miou")
PMAP_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
BETTER, WORSE, UNDETECTED = "better", "worse", "no detectable difference"


def image_scores(ious: Any, metric: str) -> np.ndarray:
    """Per-image scores of ``metric`` (``acc@T``, ``pseudo_map`` or ``miou``) from IoUs of any shape. Hits are
    decided in float32, IoU and threshold both, as `GroundingMetrics` and the rewards decide them."""
    x = np.asarray(ious, dtype=np.float32)
    if metric == "miou":
        return x.astype(np.float64)
    if metric == "pseudo_map":
        return np.mean([x >= np.float32(t) for t in PMAP_THRESHOLDS], axis=0, dtype=np.float64)
    if metric.startswith("acc@"):
        return (x >= np.float32(float(metric[4:]))).astype(np.float64)
    raise ValueError(f"unknown metric {metric!r}; use acc@T, pseudo_map or miou")


def metric_value(ious: Any, metric: str) -> float:
    """``metric`` over all images (and seeds) in ``ious``."""
    return float(image_scores(ious, metric).mean())


def verdict(lo: float, hi: float) -> str:
    """"better" when the whole interval lies above 0, "worse" below it, else "no detectable difference"."""
    return BETTER if lo > 0 else WORSE if hi < 0 else UNDETECTED


def paired_difference(a: Any, b: Any, metric: str, n_boot: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> dict[str, Any]:
    """Method a minus method b on ``metric``: the mean difference over seeds and images and its bootstrap
    interval. ``a`` and ``b`` are IoUs ``[seeds, images]`` with row s of both from the same seed and column i
    the same image. Returns ``{"diff", "lo", "hi", "verdict", "seeds", "images", "seeds_better"}``, where
    ``seeds_better`` counts the seeds whose own difference is above 0."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float32)), np.atleast_2d(np.asarray(b, dtype=np.float32))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired IoUs must have one shape [seeds, images], got {a.shape} and {b.shape}")
    d = image_scores(a, metric) - image_scores(b, metric)
    seeds, images = d.shape
    w, v = _draws(seeds, images, n_boot, seed)
    boot = (w * (v @ d.T)).sum(1) / (seeds * images)
    tail = (1.0 - level) / 2
    lo, hi = (float(q) for q in np.quantile(boot, [tail, 1.0 - tail]))
    return {"diff": float(d.mean()), "lo": lo, "hi": hi, "verdict": verdict(lo, hi), "seeds": seeds,
            "images": images, "seeds_better": int((d.mean(1) > 0).sum())}


@functools.lru_cache(maxsize=4)
def _draws(seeds: int, images: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each seed [B, S] and each image [B, I] is drawn in each of ``n_boot`` resamples (the same
    draws for every comparison of the same shape, so every pair is resampled alike)."""
    rng = np.random.default_rng(seed)
    w = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=n_boot).astype(np.float64)
    v = rng.multinomial(images, np.full(images, 1.0 / images), size=n_boot).astype(np.float64)
    return w, v


def signal_fractions(quarters: Sequence[Mapping[str, int]]) -> dict[str, Any]:
    """Whole-run and per-quarter fractions of zero-std, all-fail and all-pass groups from per-quarter counts
    ``{"groups", "zero_std", "all_fail", "all_pass"}``."""
    keys = ("zero_std", "all_fail", "all_pass")

    def fractions(counts: Mapping[str, int]) -> dict[str, float]:
        n = counts["groups"]
        return {k: (counts[k] / n if n else float("nan")) for k in keys}

    total = {k: sum(q[k] for q in quarters) for k in ("groups", *keys)}
    return {"run": fractions(total), "quarters": [fractions(q) for q in quarters]}


def pooled(runs: Sequence[Mapping[str, Any]], split: str, seeds: Sequence[int]) -> np.ndarray:
    """IoUs ``[seeds, images]`` of one method's runs on ``split``, rows in the order of ``seeds``."""
    by_seed = {r["seed"]: r for r in runs}
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise ValueError(f"no run for seeds {missing}")
    return np.asarray([by_seed[s]["ious"][split] for s in seeds], dtype=np.float32)


def fmt_diff(result: Mapping[str, Any], scale: float = 100.0) -> str:
    """``+1.2 [−0.3, +2.8]`` in points (``scale`` 100), the interval as bootstrapped."""
    return (f"{result['diff'] * scale:+.1f} [{result['lo'] * scale:+.1f}, {result['hi'] * scale:+.1f}]"
            .replace("-", "−"))
