"""Renderers for the synthetic modalities: a float image plus the opacity map of each referable structure.

Every renderer draws only from the ``rng`` it is given, so one image is one independent random stream.
Look (numpy + PIL only):
- dermoscopy: skin tone with blotchy colour and fine texture, optional hairs and a dark circular field of
  view; irregular multi-tone brown lesions with ramped (fuzzy) borders.
- ultrasound: black background, a convex-probe sector with layered echotexture, depth attenuation and
  correlated Rayleigh speckle; hypoechoic nodules, some with a thin bright rim (capsule).
- xray: air, a soft-tissue silhouette, bright bones (a calcaneus-like body with cortex and trabecular
  texture, one or two shafts) as distractors; the targets are small low-contrast dense or lucent spots.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from medloc_lightning.data.synth.draw import (
    Blob,
    blur,
    capsule,
    pixel_grid,
    ramp,
    random_blob,
    smooth_noise,
    strands,
)

MIN_RADIUS_PX = 1.5
# Any two structures' centres differ by at least this fraction of the side along x or y (so position words work).
MIN_AXIS_SEPARATION = 0.14
# X-ray spots are drawn at this fraction of the configured target size (they are the small, subtle targets).
XRAY_SIZE_SCALE = 0.7


class SynthKnobs(Protocol):
    """The knobs the renderers read (SynthConfig satisfies it)."""

    target_size: tuple[float, float]
    contrast: tuple[float, float]
    noise: float
    blur: tuple[float, float]
    edge_softness: tuple[float, float]
    irregularity: float
    hair: float


@dataclass
class Scene:
    """A rendered image in [0, 1] ((H, W, 3) or (H, W)) and the referable structures' opacity maps."""

    image: np.ndarray
    alphas: list[np.ndarray]
    polarity: int  # +1: targets brighter than their surroundings, -1: darker


def place_blobs(
    rng: np.random.Generator,
    count: int,
    size: int,
    cfg: SynthKnobs,
    fits: Callable[[Blob], bool],
    tries: int = 60,
    scale: float = 1.0,
) -> list[Blob]:
    """Sample up to ``count`` non-overlapping blobs that satisfy ``fits``; empty only if none fits at all."""
    blobs: list[Blob] = []
    for slot in range(count):
        for attempt in range(tries * (4 if slot == 0 else 1)):
            shrink = 1.0 if attempt < tries else 0.7  # the first blob must exist: shrink if space is tight
            radius = max(MIN_RADIUS_PX, rng.uniform(*cfg.target_size) * size / 2 * shrink * scale)
            softness = float(rng.uniform(*cfg.edge_softness))
            cx, cy = rng.uniform(0, size, 2)
            blob = random_blob(rng, float(cx), float(cy), float(radius), softness, cfg.irregularity)
            if not _inside_image(blob, size) or not blob.covers_a_pixel() or not fits(blob):
                continue
            if any(not _separated(blob, other, size) for other in blobs):
                continue
            blobs.append(blob)
            break
    return blobs


def _no_room() -> ValueError:
    return ValueError("could not place any structure in the image: lower the target size (--target-size)")


def _inside_image(blob: Blob, size: int) -> bool:
    r = blob.reach * (1.0 + 2.0 * blob.softness) + 1.0
    return r <= blob.cx <= size - r and r <= blob.cy <= size - r


def _separated(a: Blob, b: Blob, size: int) -> bool:
    gap = math.hypot(a.cx - b.cx, a.cy - b.cy) >= 1.15 * (a.reach + b.reach) + 2.0
    axis = max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= MIN_AXIS_SEPARATION * size
    return gap and axis


def _degrade(rng: np.random.Generator, img: np.ndarray, size: int, cfg: SynthKnobs, sigma_noise: float) -> np.ndarray:
    """Image-level blur (sigma drawn from cfg.blur x side) then additive Gaussian noise."""
    img = blur(img, float(rng.uniform(*cfg.blur)) * size)
    return img + (sigma_noise * cfg.noise) * rng.standard_normal(img.shape, dtype=np.float32)


def render_dermoscopy(rng: np.random.Generator, size: int, count: int, cfg: SynthKnobs) -> Scene:
    """Skin background, optional hairs and vignette, irregular brown lesions darker than the skin."""
    yy, xx = pixel_grid(size, size)
    light, tan = np.array([0.95, 0.80, 0.72], np.float32), np.array([0.72, 0.50, 0.40], np.float32)
    base = light + float(rng.uniform(0, 1)) * (tan - light)
    blotch = smooth_noise(rng, size, size, 4, 4)[..., None]
    redness = smooth_noise(rng, size, size, 3, 3)[..., None]
    pores = blur(rng.standard_normal((size, size), dtype=np.float32), 0.8)[..., None]
    skin = base * (1 + 0.035 * blotch) + np.array([0.03, -0.008, -0.008], np.float32) * redness + 0.025 * pores

    fov = None
    if rng.random() < 0.35:
        fov = (size / 2 + rng.normal(0, 0.03 * size, 2), float(rng.uniform(0.62, 0.75)) * size)

    def fits(blob: Blob) -> bool:
        if fov is None:
            return True
        (fx, fy), fr = fov
        return math.hypot(blob.cx - fx, blob.cy - fy) + blob.reach * 1.3 <= fr

    blobs = place_blobs(rng, count, size, cfg, fits)
    if not blobs:
        raise _no_room()
    img, alphas = skin.copy(), []
    chroma = np.array([0.80, 0.93, 1.0], np.float32)
    for blob in blobs:
        alpha, d = blob.field(size, size)
        win = blob.bounds(size, size)
        a, dw = alpha[win][..., None], d[win]
        cells = max(2.0, dw.shape[0] / max(blob.radius * 0.6, 1.0))
        mottle = smooth_noise(rng, dw.shape[0], dw.shape[1], cells, cells)
        centre_dark = np.clip(1.0 - dw, 0.0, 1.0) * float(rng.uniform(0.0, 0.5))
        darkness = float(rng.uniform(*cfg.contrast)) * np.clip(0.85 + 0.18 * mottle + centre_dark, 0.4, 1.5)
        lesion = skin[win] * (1.0 - np.clip(darkness, 0.0, 0.95)[..., None] * chroma)
        img[win] = img[win] * (1.0 - a) + lesion * a
        alphas.append(alpha)

    if rng.random() < cfg.hair:
        cover = blur(strands(rng, size, size, int(rng.integers(1, 9)), (1, 1 + size / 160)), 0.5)
        hair = np.array([0.18, 0.12, 0.09], np.float32) * float(rng.uniform(0.4, 1.2))
        img = img * (1.0 - 0.85 * cover[..., None]) + hair * 0.85 * cover[..., None]
    if fov is not None:
        (fx, fy), fr = fov
        inside = ramp(fr - np.hypot(xx - fx, yy - fy), 0.02 * size)
        floor = float(rng.uniform(0.05, 0.25))
        img = img * (floor + (1.0 - floor) * inside[..., None])
    return Scene(_degrade(rng, img, size, cfg, 0.012), alphas, polarity=-1)


def render_ultrasound(rng: np.random.Generator, size: int, count: int, cfg: SynthKnobs) -> Scene:
    """A convex-probe sector of speckled tissue holding hypoechoic (darker) nodules."""
    yy, xx = pixel_grid(size, size)
    ax, ay = size / 2 + rng.normal(0, 0.02 * size), -float(rng.uniform(0.05, 0.25)) * size
    r_min = -ay + float(rng.uniform(0.03, 0.08)) * size
    r_max = float(rng.uniform(0.95, 1.05)) * (size - ay)
    half = float(rng.uniform(0.55, 0.75))
    rr, th = np.hypot(xx - ax, yy - ay), np.arctan2(xx - ax, yy - ay)
    sector = ramp(rr - r_min, 1.0) * ramp(r_max - rr, 1.0) * ramp((half - np.abs(th)) * rr, 1.0)

    depth = np.clip((rr - r_min) / (r_max - r_min), 0.0, 1.0)
    echo = 0.55 + 0.08 * smooth_noise(rng, size, size, 9, 2) + 0.05 * smooth_noise(rng, size, size, 4, 4)
    echo = echo * (1.0 - float(rng.uniform(0.15, 0.4)) * depth)
    echo = echo + 0.3 * np.exp(-(((rr - r_min - 0.02 * size) / (0.012 * size)) ** 2))

    def fits(blob: Blob) -> bool:
        r, t = math.hypot(blob.cx - ax, blob.cy - ay), math.atan2(blob.cx - ax, blob.cy - ay)
        reach = blob.reach * 1.2 + 2.0
        return (
            r - reach >= r_min + 0.04 * size
            and r + reach <= r_max - 0.02 * size
            and abs(t) + math.asin(min(1.0, reach / r)) <= half - 0.03
        )

    blobs = place_blobs(rng, count, size, cfg, fits)
    if not blobs:
        raise _no_room()
    alphas = []
    for blob in blobs:
        alpha, d = blob.field(size, size)
        win = blob.bounds(size, size)
        a, dw = alpha[win], d[win]
        cells = max(2.0, dw.shape[0] / max(blob.radius * 0.5, 1.0))
        strength = float(rng.uniform(*cfg.contrast))
        inner = strength * (1.0 + 0.12 * smooth_noise(rng, *dw.shape, cells, cells))
        echo[win] = echo[win] * (1.0 - np.clip(inner, 0.0, 0.97) * a)
        if rng.random() < 0.5:  # a thin echogenic capsule, weaker than the darkening it surrounds
            rim = np.exp(-(((dw - 0.96) / 0.035) ** 2)) * (dw < 1.1)
            echo[win] = echo[win] + strength * float(rng.uniform(0.2, 0.45)) * rim
        alphas.append(alpha)

    k = size / 224
    speckle = np.hypot(
        blur(rng.standard_normal((size, size), dtype=np.float32), 0.45 * k, 1.0 * k),
        blur(rng.standard_normal((size, size), dtype=np.float32), 0.45 * k, 1.0 * k),
    )
    speckle /= speckle.mean()
    mix = min(1.0, 0.6 * cfg.noise)
    img = np.clip(echo * (1.0 + mix * (speckle - 1.0)), 0.0, None) ** 0.85 * sector
    return Scene(_degrade(rng, img, size, cfg, 0.01), alphas, polarity=-1)


def render_xray(rng: np.random.Generator, size: int, count: int, cfg: SynthKnobs) -> Scene:
    """Soft tissue and bones (distractors) with small low-contrast dense (+1) or lucent (-1) target spots."""
    body = random_blob(rng, size * float(rng.uniform(0.42, 0.58)), size * float(rng.uniform(0.45, 0.6)),
                       size * float(rng.uniform(0.5, 0.65)), 0.03, 0.15, max_aspect=1.5)
    body_a, body_d = body.field(size, size)
    img = float(rng.uniform(0.04, 0.1)) + body_a * (
        float(rng.uniform(0.2, 0.28)) + 0.1 * np.clip(1.0 - body_d**2, 0.0, 1.0)
    )
    img = img + 0.015 * smooth_noise(rng, size, size, 5, 5) * body_a

    heel = random_blob(rng, size * float(rng.uniform(0.35, 0.65)), size * float(rng.uniform(0.55, 0.75)),
                       size * float(rng.uniform(0.17, 0.25)), 0.03, 0.2, max_aspect=1.8)
    heel_a, heel_d = heel.field(size, size)
    trabecular = smooth_noise(rng, size, size, size / 10, size / 20)
    img = img + heel_a * (float(rng.uniform(0.22, 0.32)) + 0.035 * trabecular)
    img = img + 0.12 * np.exp(-(((heel_d - 0.93) / 0.05) ** 2)) * (heel_d < 1.1)
    for _ in range(int(rng.integers(1, 3))):
        top = (size * float(rng.uniform(0.15, 0.85)), -0.1 * size)
        bottom = (heel.cx + rng.normal(0, 0.1 * size), heel.cy - float(rng.uniform(0.05, 0.2)) * size)
        width = size * float(rng.uniform(0.035, 0.06))
        shaft_a, shaft_d = capsule(size, size, top, bottom, width, 0.04)
        end = random_blob(rng, bottom[0], bottom[1], width * float(rng.uniform(1.5, 2.0)), 0.05, 0.15)
        end_a, end_d = end.field(size, size)
        bone_a = np.maximum(shaft_a, end_a)  # one bone: the shaft flares into its end, no double density
        cortex = np.maximum(np.exp(-(((shaft_d - 0.85) / 0.1) ** 2)) * (shaft_d < 1.05) * (end_d > 0.9),
                            0.6 * np.exp(-(((end_d - 0.92) / 0.06) ** 2)) * (end_d < 1.1))
        medulla = (shaft_d < 0.55) * (end_d > 1.0)
        img = img + bone_a * float(rng.uniform(0.18, 0.26)) + 0.12 * cortex - 0.04 * medulla
    background = img

    delta = 0.25 * float(rng.uniform(*cfg.contrast))
    polarity = 1 if rng.random() < 0.5 else -1

    def fits(blob: Blob, smooth: bool = True) -> bool:
        # Inside the body and, preferably, on locally smooth background (not straddling a bone edge).
        r = int(blob.reach * 1.4) + 2
        x0, x1 = max(0, int(blob.cx) - r), min(size, int(blob.cx) + r + 1)
        y0, y1 = max(0, int(blob.cy) - r), min(size, int(blob.cy) + r + 1)
        if body_a[y0:y1, x0:x1].min() < 0.95:
            return False
        return not smooth or float(background[y0:y1, x0:x1].std()) <= max(0.025, 0.4 * delta)

    blobs = (
        place_blobs(rng, count, size, cfg, fits, tries=120, scale=XRAY_SIZE_SCALE)
        or place_blobs(rng, count, size, cfg, lambda b: fits(b, smooth=False), scale=XRAY_SIZE_SCALE)
        or place_blobs(rng, count, size, cfg, lambda b: body_a[int(b.cy), int(b.cx)] > 0.9, scale=XRAY_SIZE_SCALE)
    )
    if not blobs:
        raise _no_room()
    alphas = []
    for blob in blobs:
        alpha, _ = blob.field(size, size)
        img = img + polarity * delta * float(rng.uniform(0.85, 1.15)) * alpha
        alphas.append(alpha)
    return Scene(_degrade(rng, img, size, cfg, 0.018), alphas, polarity=polarity)


RENDERERS: dict[str, Callable[[np.random.Generator, int, int, SynthKnobs], Scene]] = {
    "dermoscopy": render_dermoscopy,
    "ultrasound": render_ultrasound,
    "xray": render_xray,
}
