"""Synthetic medical grounding data: dermoscopy-, ultrasound- and X-ray-like images with referring queries.

Writes ``OUT/images/<id>.png``, ``OUT/{train,val,test}.jsonl`` (image paths relative to OUT) and
``OUT/synth.json`` (what made the folder, and with which arguments) in the record schema of docs/architecture.md, plus one extra field, ``distractors``: the boxes of the other
referable structures in the image (same convention as ``bbox``; bones in X-rays are not listed). The box
is the tight box of the target's footprint, its opacity ramp >= 0.5 (see `draw`). Image ``i`` comes from
its own random stream ``SeedSequence(seed, spawn_key=(i,))``, so output is byte-identical for the same
arguments whatever the worker count (on one platform: BLAS and zlib builds may differ elsewhere), and growing
``n`` leaves earlier images unchanged. Splits are contiguous index ranges sized by largest remainder; in
``mixed`` mode modalities cycle by index. Queries: see `query`. The generator writes only into an empty
folder or one it made itself (``synth.json`` present), so it never overwrites a user's data.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medloc_lightning.checkpointing.atomic import write_text
from medloc_lightning.data.converters.common import write_jsonl
from medloc_lightning.data.synth.draw import to_uint8
from medloc_lightning.data.synth.query import choose_referent, measure, phrase
from medloc_lightning.data.synth.render import RENDERERS
from medloc_lightning.errors import ConfigError

MODALITIES = ("dermoscopy", "ultrasound", "xray")
LABELS = {"dermoscopy": "lesion", "ultrasound": "nodule", "xray": "spot"}
SPLITS = ("train", "val", "test")
_MAX_SCENE_ATTEMPTS = 12
STAMP = "synth.json"
"""The generator's mark on a folder it made: written first (status "writing"), completed last."""
MAX_TARGET_SIZE = 0.6  # larger structures do not fit the ultrasound sector


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs. Ranges are (low, high), sampled uniformly per structure or image.

    target_size: nominal structure diameter as a fraction of the image side (X-ray spots: 0.7 x this).
    contrast: target strength in [0, 1]: fraction of skin brightness (dermoscopy) or echo (ultrasound)
        removed; X-ray spots change intensity by 0.25 x contrast of full scale (up or down).
    noise: multiplier on each modality's noise (additive noise, ultrasound speckle): lower SNR when larger.
    blur: image-level Gaussian blur sigma as a fraction of the image side.
    edge_softness: border ramp width as a fraction of the structure's radius (fuzzy borders).
    structures: (min, max) referable structures per image, within 1..3.
    splits: train/val/test ratios (normalised to sum 1).
    hair: probability of hair strands over a dermoscopy image.
    irregularity: amplitude of the border wobble (0 = ellipses).
    """

    target_size: tuple[float, float] = (0.12, 0.32)
    contrast: tuple[float, float] = (0.35, 0.8)
    noise: float = 1.0
    blur: tuple[float, float] = (0.0, 0.006)
    edge_softness: tuple[float, float] = (0.04, 0.2)
    structures: tuple[int, int] = (1, 3)
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    hair: float = 0.35
    irregularity: float = 0.25

    def __post_init__(self) -> None:
        for name in ("target_size", "contrast", "blur", "edge_softness"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ConfigError(f"SynthConfig.{name}: need 0 <= low <= high <= 1, got ({lo}, {hi})")
        if not 0.0 < self.target_size[0] <= self.target_size[1] <= MAX_TARGET_SIZE:
            raise ConfigError(f"SynthConfig.target_size: need 0 < low <= high <= {MAX_TARGET_SIZE}, "
                             f"got {self.target_size}")
        lo, hi = self.structures
        if not 1 <= lo <= hi <= 3:
            raise ConfigError(f"SynthConfig.structures: need 1 <= min <= max <= 3, got ({lo}, {hi})")
        if len(self.splits) != 3 or min(self.splits) < 0 or sum(self.splits) <= 0:
            raise ConfigError(f"SynthConfig.splits: need three non-negative ratios with a positive sum, "
                             f"got {self.splits}")
        if not self.noise >= 0.0:
            raise ConfigError(f"SynthConfig.noise: need >= 0, got {self.noise}")
        if not 0.0 <= self.hair <= 1.0:
            raise ConfigError(f"SynthConfig.hair: need a probability in [0, 1], got {self.hair}")
        if not 0.0 <= self.irregularity <= 0.5:
            raise ConfigError(f"SynthConfig.irregularity: need 0 <= irregularity <= 0.5, got {self.irregularity}")

    @classmethod
    def preset(cls, name: str) -> "SynthConfig":
        """A named preset: 'easy', 'small', 'default', 'single', 'lab' or 'hard'."""
        if name not in PRESETS:
            raise ConfigError(f"unknown synth preset {name!r}; choose from {sorted(PRESETS)}")
        return PRESETS[name]


PRESETS: dict[str, SynthConfig] = {
    # One large high-contrast structure: smoke tests and tutorials.
    "easy": SynthConfig(target_size=(0.25, 0.45), contrast=(0.7, 1.0), noise=0.5, blur=(0.0, 0.003),
                        edge_softness=(0.03, 0.1), structures=(1, 1)),
    # Learnable in minutes on CPU, but the query matters (1-3 structures) and borders are soft.
    "default": SynthConfig(),
    # One small but visible structure per image: easy to recognise, hard to box tightly by chance (a random
    # box almost never reaches IoU 0.5): the sparse-reward regime of the paper, learnable on CPU in minutes.
    "lab": SynthConfig(target_size=(0.08, 0.16), contrast=(0.6, 0.9), noise=0.7, blur=(0.0, 0.004),
                       edge_softness=(0.05, 0.15), structures=(1, 1)),
    # 'easy' at about half the size: one clear structure, but a loose box now misses IoU 0.5.
    "small": SynthConfig(target_size=(0.12, 0.25), contrast=(0.7, 1.0), noise=0.5, blur=(0.0, 0.003),
                         edge_softness=(0.03, 0.1), structures=(1, 1)),
    # The default knobs with one structure per image: smaller and fainter than 'easy', no query to resolve.
    "single": SynthConfig(structures=(1, 1)),
    # Small, faint, blurry, noisy targets: a random box rarely reaches IoU 0.5.
    "hard": SynthConfig(target_size=(0.05, 0.11), contrast=(0.25, 0.5), noise=1.25, blur=(0.003, 0.01),
                        edge_softness=(0.15, 0.35)),
}


def split_counts(n: int, ratios: tuple[float, float, float]) -> dict[str, int]:
    """Exact per-split counts summing to n (largest remainder; ties go to the earlier split)."""
    total = float(sum(ratios))
    quotas = [n * r / total for r in ratios]
    counts = [int(q) for q in quotas]
    order = sorted(range(3), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return dict(zip(SPLITS, counts))


def make_record(
    index: int, seed: int, modality: str, size: int, config: SynthConfig
) -> tuple[dict[str, Any], np.ndarray]:
    """Render image ``index`` of the dataset and return its record (image path relative to OUT) and pixels."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    if modality == "mixed":
        modality = MODALITIES[index % len(MODALITIES)]
    lo, hi = config.structures
    for attempt in range(_MAX_SCENE_ATTEMPTS):
        count = int(rng.integers(lo, hi + 1)) if attempt < _MAX_SCENE_ATTEMPTS - 1 else 1
        try:
            scene = RENDERERS[modality](rng, size, count, config)
        except ValueError as err:
            raise ValueError(f"synth: image {index} ({modality}, {size} px, target_size "
                             f"{config.target_size}): {err}") from None
        structs = measure(scene.image, scene.alphas)
        choice = choose_referent(structs, size, modality != "xray", rng)
        if choice is not None:
            break
    else:  # pragma: no cover - the last attempt renders one structure, which is always referable
        raise RuntimeError(f"synth: no referable structure for image {index}")
    target, attrs = choice
    sample_id = f"synth-{modality}-{index:06d}"
    record = {
        "id": sample_id,
        "image": f"images/{sample_id}.png",
        "query": phrase(modality, attrs, len(structs), scene.polarity, rng),
        "bbox": structs[target].box,
        "width": size,
        "height": size,
        "dataset": "synthetic",
        "modality": modality,
        "label": LABELS[modality],
        "distractors": [s.box for j, s in enumerate(structs) if j != target],
    }
    return record, to_uint8(scene.image)


def _write_one(job: tuple[int, int, str, int, SynthConfig, str]) -> dict[str, Any]:
    index, seed, modality, size, config, out_dir = job
    record, pixels = make_record(index, seed, modality, size, config)
    Image.fromarray(pixels).save(os.path.join(out_dir, record["image"]), format="PNG", compress_level=1)
    return record


def generate(
    out_dir: str | os.PathLike[str],
    n: int = 1000,
    seed: int = 0,
    modality: str = "mixed",
    size: int = 224,
    config: SynthConfig | None = None,
    workers: int = 1,
) -> dict[str, int]:
    """Write n images and all three split files under out_dir; return the record count per split."""
    if modality not in (*MODALITIES, "mixed"):
        raise ConfigError(f"synth: unknown modality {modality!r}; choose from {[*MODALITIES, 'mixed']}")
    if n < 0 or seed < 0 or workers < 1:
        raise ConfigError(f"synth: need n >= 0, seed >= 0 and workers >= 1, got n={n}, seed={seed}, workers={workers}")
    if not 32 <= size <= 2048:
        raise ConfigError(f"synth: size must be within 32..2048 px, got {size}")
    config = config or SynthConfig()
    out = Path(out_dir)
    _claim(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, modality, size, config, str(out)) for i in range(n)]
    if workers > 1 and n > 1:
        with multiprocessing.get_context().Pool(min(workers, n)) as pool:
            records = pool.map(_write_one, jobs, chunksize=max(1, n // (8 * workers)))
    else:
        records = [_write_one(job) for job in jobs]
    counts = split_counts(n, config.splits)
    start = 0
    for split in SPLITS:
        chunk = records[start : start + counts[split]]
        start += counts[split]
        write_jsonl(out / f"{split}.jsonl", chunk)
    _write_stamp(out, {"status": "complete", "args": stamp_args(n, seed, modality, size, config)})
    return counts


def stamp_args(n: int, seed: int, modality: str, size: int, config: SynthConfig) -> dict[str, Any]:
    """The generation arguments as ``synth.json`` records them (plain JSON values)."""
    args = {"n": int(n), "seed": int(seed), "modality": modality, "size": int(size), "config": dataclasses.asdict(config)}
    return json.loads(json.dumps(args))


def read_stamp(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The folder's ``synth.json`` (None when absent or unreadable)."""
    try:
        with open(Path(out_dir) / STAMP, encoding="utf-8") as fh:
            stamp = json.load(fh)
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _write_stamp(out: Path, content: dict[str, Any]) -> None:
    write_text(out / STAMP, json.dumps({"generator": "medloc-data synth", **content}))


def _claim(out: Path) -> None:
    """Mark ``out`` as the generator's before writing anything; refuse a folder it did not make."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"synth: output {out} exists and is not a folder")
    if out.is_dir() and (out / STAMP).is_file() is False and any(out.iterdir()):
        raise ConfigError(f"synth: refusing to write into {out}: it is not empty and was not made by the generator "
                         f"(no {STAMP}), so it may hold your own data. Choose a new or empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    _write_stamp(out, {"status": "writing"})


def _range(kind: type) -> Any:
    return {"nargs": 2, "type": kind, "metavar": ("LOW", "HIGH")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `medloc-data synth` options; knobs left unset keep the preset's values."""
    parser.add_argument("--out", required=True,
                        help="output folder (images/, train/val/test.jsonl, synth.json): new, empty, or made by synth")
    parser.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--modality", choices=[*MODALITIES, "mixed"], default="mixed")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="difficulty preset")
    parser.add_argument("--target-size", **_range(float), help="structure diameter range, fraction of the side")
    parser.add_argument("--contrast", **_range(float), help="target contrast range in [0, 1]")
    parser.add_argument("--noise", type=float, help="noise multiplier (higher = lower SNR)")
    parser.add_argument("--blur", **_range(float), help="image blur sigma range, fraction of the side")
    parser.add_argument("--edge-softness", **_range(float), help="border ramp width range, fraction of the radius")
    parser.add_argument("--structures", **_range(int), help="structures per image, within 1..3")
    parser.add_argument("--splits", nargs=3, type=float, metavar=("TRAIN", "VAL", "TEST"), help="split ratios")
    parser.add_argument("--hair", type=float, help="probability of hair on dermoscopy images")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (output does not depend on it)")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The preset named by --preset with every explicitly given knob replaced."""
    overrides = {
        field: tuple(value) if isinstance(value, list) else value
        for field in ("target_size", "contrast", "noise", "blur", "edge_softness", "structures", "splits", "hair")
        if (value := getattr(args, field, None)) is not None
    }
    return dataclasses.replace(SynthConfig.preset(args.preset), **overrides)


def run(args: argparse.Namespace) -> int:
    """Entry point of `medloc-data synth`: generate, print the counts, return the exit status. Bad arguments
    raise ``ValueError``, which `medloc-data` reports in one line."""
    config = config_from_args(args)
    counts = generate(args.out, n=args.n, seed=args.seed, modality=args.modality, size=args.size,
                      config=config, workers=args.workers)
    print(f"wrote {sum(counts.values())} images to {args.out}: "
          + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0

