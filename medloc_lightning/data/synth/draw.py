"""Vectorized numpy drawing primitives for the synthetic generator: blurs, smooth noise, soft shapes.

Pixel (row i, column j) covers [j, j+1) x [i, i+1); shapes are evaluated at pixel centres (j + 0.5, i + 0.5).
A shape's *footprint* is where its opacity ``alpha >= FOOTPRINT_THRESHOLD``; its box is the tight box of
that footprint with exclusive x2/y2, the same rule a segmentation-mask converter uses.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

FOOTPRINT_THRESHOLD = 0.5


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) row-normalised Gaussian smoothing operator; ``G @ x`` blurs x along its first axis."""
    return _gaussian_matrix(n, round(sigma, 2))


@functools.lru_cache(maxsize=256)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    idx = np.arange(n, dtype=np.float32)
    g = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
    g[g < 1e-6] = 0.0
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def blur(img: np.ndarray, sigma_y: float, sigma_x: float | None = None) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) or (H, W, C) float array (truncated, renormalised at borders)."""
    sigma_x = sigma_y if sigma_x is None else sigma_x
    out = img.astype(np.float32, copy=False)
    chw = out.ndim == 3
    if chw:
        out = np.moveaxis(out, 2, 0)
    # Matrix products beat shifted sums here: (H, W, C) rows are strided and BLAS is fast at this size.
    if sigma_y >= 0.3:
        out = gaussian_matrix(out.shape[-2], sigma_y) @ out
    if sigma_x >= 0.3:
        out = out @ gaussian_matrix(out.shape[-1], sigma_x).T
    return np.ascontiguousarray(np.moveaxis(out, 0, 2)) if chw else out


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells_y: float, cells_x: float) -> np.ndarray:
    """Low-frequency noise with about unit std: a coarse Gaussian grid upsampled bicubically."""
    gy, gx = max(2, round(cells_y)) + 2, max(2, round(cells_x)) + 2
    coarse = rng.standard_normal((gy, gx)).astype(np.float32)
    # Upsample a grid one cell wider on each side, then crop, so borders are not clamped flat.
    big = Image.fromarray(coarse, mode="F").resize(
        (width * gx // (gx - 2), height * gy // (gy - 2)), Image.Resampling.BICUBIC
    )
    arr = np.asarray(big, dtype=np.float32)
    oy, ox = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
    arr = arr[oy : oy + height, ox : ox + width]
    return (arr - arr.mean()) / (arr.std() + 1e-6)


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) pixel-centre coordinates as broadcastable float32 arrays."""
    yy = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    return yy, xx


def ramp(signed: np.ndarray, width: float) -> np.ndarray:
    """Smooth step from 0 to 1: 0.5 where ``signed == 0``; ``width`` sets the transition length."""
    return (0.5 * (1.0 + np.tanh(signed / (2.0 * max(width, 1e-3))))).astype(np.float32)


@dataclass(frozen=True)
class Blob:
    """An irregular ellipse: polar radius ``radius * (1 + sum a_k cos(k phi + p_k))``, minor axis / aspect."""

    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float
    harmonics: tuple[tuple[float, float], ...]
    softness: float

    @property
    def reach(self) -> float:
        """Radius of a circle that holds the whole footprint."""
        return self.radius * (1.0 + sum(abs(a) for a, _ in self.harmonics))

    def bounds(self, height: int, width: int) -> tuple[slice, slice]:
        """(rows, cols) window outside which alpha is below 1e-3 (possibly empty at the image edge)."""
        pad = self.reach * (1.0 + 8.0 * self.softness) + 2.0
        x0, x1 = max(0, int(self.cx - pad)), min(width, max(0, int(math.ceil(self.cx + pad))))
        y0, y1 = max(0, int(self.cy - pad)), min(height, max(0, int(math.ceil(self.cy + pad))))
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))

    def distance(self, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        """Normalised distance at points (x, y): 1 on the footprint border, < 1 inside."""
        dx, dy = xx - self.cx, yy - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = dx * c + dy * s, (dy * c - dx * s) * self.aspect
        rho = np.sqrt(u * u + v * v)
        safe = np.maximum(rho, 1e-6)
        cos1, sin1 = np.where(rho > 0, u / safe, 1.0), v / safe  # polar angle phi without arctan2
        cos_k, sin_k = cos1, sin1
        scale = np.ones_like(rho)
        for a, p in self.harmonics:  # cos(k phi + p) for k = 2, 3, ... by the angle-addition recurrence
            cos_k, sin_k = cos_k * cos1 - sin_k * sin1, sin_k * cos1 + cos_k * sin1
            scale = scale + a * (cos_k * math.cos(p) - sin_k * math.sin(p))
        return (rho / (self.radius * scale)).astype(np.float32)

    def covers_a_pixel(self) -> bool:
        """Whether the pixel centre nearest to the blob's centre is inside it (so the footprint is not empty)."""
        x, y = math.floor(self.cx) + 0.5, math.floor(self.cy) + 0.5
        return bool(self.distance(np.array([x], np.float32), np.array([y], np.float32))[0] < 1.0)

    def field(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, d): opacity in [0, 1] and normalised distance (1 on the footprint border), full size."""
        rows, cols = self.bounds(height, width)
        alpha = np.zeros((height, width), np.float32)
        d = np.full((height, width), np.inf, np.float32)
        yy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + 0.5
        xx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + 0.5
        dn = self.distance(xx, yy)
        d[rows, cols] = dn
        alpha[rows, cols] = ramp(1.0 - dn, self.softness)
        return alpha, d


def random_blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    radius: float,
    softness: float,
    irregularity: float,
    max_aspect: float = 1.6,
) -> Blob:
    """A Blob with random orientation, elongation and border wobble (wobble amplitude ~ irregularity)."""
    amps = rng.uniform(0.0, irregularity, 5) / np.arange(1, 6)  # harmonic k = 2..6 gets amplitude ~ 1/(k-1)
    phases = rng.uniform(0.0, 2 * math.pi, 5)
    harmonics = tuple((float(a), float(p)) for a, p in zip(amps, phases))
    return Blob(
        cx=cx,
        cy=cy,
        radius=radius,
        aspect=float(rng.uniform(1.0, max_aspect)),
        angle=float(rng.uniform(0.0, math.pi)),
        harmonics=harmonics,
        softness=softness,
    )


def capsule(
    height: int, width: int, p0: tuple[float, float], p1: tuple[float, float], radius: float, softness: float
) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, d) for a rounded bar from p0 to p1 ((x, y) points); d = distance to the axis / radius."""
    yy, xx = pixel_grid(height, width)
    (ax, ay), (bx, by) = p0, p1
    vx, vy = bx - ax, by - ay
    t = np.clip(((xx - ax) * vx + (yy - ay) * vy) / max(vx * vx + vy * vy, 1e-6), 0.0, 1.0)
    dist = np.hypot(xx - ax - t * vx, yy - ay - t * vy) / radius
    return ramp(1.0 - dist, softness), dist.astype(np.float32)


def footprint_box(alpha: np.ndarray) -> tuple[list[float], int]:
    """Tight [x1, y1, x2, y2] (x2/y2 exclusive) of ``alpha >= FOOTPRINT_THRESHOLD`` and its pixel count."""
    mask = alpha >= FOOTPRINT_THRESHOLD
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise ValueError("structure has an empty footprint")
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)], int(mask.sum())


def strands(
    rng: np.random.Generator, height: int, width: int, count: int, thickness: tuple[float, float]
) -> np.ndarray:
    """Coverage map in [0, 1] of ``count`` thin curved strands (hair-like quadratic Bezier polylines)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(count):
        start = rng.uniform(-0.1, 1.1, 2) * (width, height)
        heading = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.3, 0.9) * max(width, height)
        end = start + length * np.array([math.cos(heading), math.sin(heading)])
        bend = (start + end) / 2 + rng.normal(0, 0.15 * length, 2)
        pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
        w = max(1, round(rng.uniform(*thickness)))
        draw.line([tuple(p) for p in pts.tolist()], fill=255, width=w, joint="curve")
    return np.asarray(canvas, dtype=np.float32) / 255.0


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Clip a [0, 1] float image and quantise it."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def luminance(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an (H, W, 3) array, or the array itself when already grey."""
    return img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
