"""Box maths: IoU of xyxy boxes, Qwen2.5-VL's resize rule, and the one original <-> model pixel mapping.

Boxes are ``[x1, y1, x2, y2]`` in continuous pixel coordinates: ``x2``/``y2`` are exclusive edges, so a
box's width is ``x2 - x1`` (no ``+1``). The model (Qwen2.5-VL) reads and writes absolute pixels of the
*processor-resized* image; datasets, rewards and metrics use *original-image* pixels. `ImageGeometry` is
the only place that converts between the two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "BoxLike",
    "ImageGeometry",
    "QWEN_FACTOR",
    "QWEN_MAX_PIXELS",
    "QWEN_MIN_PIXELS",
    "box_area",
    "box_iou",
    "box_is_valid",
    "clip_box",
    "smart_resize",
]

QWEN_FACTOR = 28
"""Pixels per visual token side in Qwen2.5-VL: patch 14 x spatial merge 2."""
QWEN_MIN_PIXELS = 3136
"""Qwen2.5-VL processor default ``min_pixels`` (56 * 56)."""
QWEN_MAX_PIXELS = 12845056
"""Qwen2.5-VL processor default ``max_pixels`` (16384 * 28 * 28)."""
_MAX_ASPECT_RATIO = 200

BoxLike = Union[Tensor, Sequence[float]]
"""A ``(..., 4)`` tensor of xyxy boxes, or one box as a sequence of 4 numbers."""


def _as_float(boxes: Tensor) -> Tensor:
    return boxes if boxes.is_floating_point() else boxes.to(torch.get_default_dtype())


def _check_last_dim(boxes: Tensor, name: str) -> None:
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) (xyxy boxes), got {tuple(boxes.shape)}")


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``(..., 4)`` xyxy boxes; inverted sides count as 0 (NaN/inf propagate)."""
    _check_last_dim(boxes, "boxes")
    boxes = _as_float(boxes)
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_is_valid(boxes: Tensor) -> Tensor:
    """Bool ``(...)``: True where a box is finite, has x2 > x1 and y2 > y1, and its area is finite."""
    _check_last_dim(boxes, "boxes")
    boxes = _as_float(boxes)
    wh = boxes[..., 2:] - boxes[..., :2]
    return (wh > 0).all(-1) & (wh[..., 0] * wh[..., 1]).isfinite()


def box_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Elementwise IoU of ``(..., 4)`` xyxy boxes (broadcast like torch ops) -> ``(...)``, never NaN.

    A predicted box that is non-finite, inverted or of zero area gives 0, and so does such a target (no
    exception: a reward must not crash on a bad row). Integer inputs are promoted to the default float
    dtype; float inputs keep their (promoted) dtype.
    """
    _check_last_dim(pred, "pred")
    _check_last_dim(target, "target")
    if pred.shape != target.shape:
        try:
            torch.broadcast_shapes(pred.shape, target.shape)
        except RuntimeError as err:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} do not broadcast") from err
    p, t = _as_float(pred), _as_float(target)
    overlap = (torch.minimum(p[..., 2:], t[..., 2:]) - torch.maximum(p[..., :2], t[..., :2])).clamp(min=0)  # (w, h)
    p_side, t_side = p[..., 2:] - p[..., :2], t[..., 2:] - t[..., :2]
    inter = overlap[..., 0] * overlap[..., 1]
    union = p_side[..., 0] * p_side[..., 1] + t_side[..., 0] * t_side[..., 1] - inter
    # The areas are not clamped: when either box is inverted its clamped overlap is 0, so the quotient is 0
    # (or -0.0) whatever sign the union takes; 0/0 and inf/inf are NaN and become 0.
    return torch.nan_to_num(inter / union, nan=0.0)


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2.5-VL's processor resize rule -> ``(resized_height, resized_width)``.

    Each side is rounded to a multiple of ``factor``; if the pixel count then exceeds ``max_pixels`` the
    image is scaled down (sides floored to multiples of ``factor``), if below ``min_pixels`` scaled up
    (ceiled). Aspect ratios above 200 raise ValueError, as Qwen's processor does.
    """
    for name, value in (("height", height), ("width", width), ("factor", factor),
                        ("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        _check_positive_int(name, value)
    if max(height, width) / min(height, width) > _MAX_ASPECT_RATIO:
        raise ValueError(
            f"smart_resize: aspect ratio of height={height}, width={width} is above {_MAX_ASPECT_RATIO} "
            f"(Qwen2.5-VL's processor rejects such images)"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _scale(box: BoxLike, sx: float, sy: float) -> BoxLike:
    """Multiply x by ``sx`` and y by ``sy`` for a ``(..., 4)`` tensor or one 4-sequence (-> tuple)."""
    if isinstance(box, Tensor):
        _check_last_dim(box, "box")
        box = _as_float(box)
        return box * torch.tensor((sx, sy, sx, sy), dtype=box.dtype, device=box.device)
    x1, y1, x2, y2 = _four(box)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def _four(box: Sequence[float]) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError) as err:
        raise ValueError(f"a box must be a (..., 4) tensor or 4 numbers, got {box!r}") from err
    if len(values) != 4:
        raise ValueError(f"a box must have 4 numbers [x1, y1, x2, y2], got {len(values)}: {box!r}")
    return values  # type: ignore[return-value]


def clip_box(box: BoxLike, width: float, height: float) -> BoxLike:
    """Clamp xyxy box(es) to the image ``[0, width] x [0, height]`` (tensor in, tensor out; else a tuple)."""
    if isinstance(box, Tensor):
        _check_last_dim(box, "box")
        box = _as_float(box)
        lo = torch.zeros(4, dtype=box.dtype, device=box.device)
        hi = torch.tensor((width, height, width, height), dtype=box.dtype, device=box.device)
        return torch.minimum(torch.maximum(box, lo), hi)
    x1, y1, x2, y2 = _four(box)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height))


@dataclass(frozen=True)
class ImageGeometry:
    """Original image size and the size the model sees; maps boxes between the two pixel spaces."""

    width: int
    height: int
    resized_width: int
    resized_height: int

    def __post_init__(self) -> None:
        for name in ("width", "height", "resized_width", "resized_height"):
            _check_positive_int(name, getattr(self, name))

    @classmethod
    def from_size(
        cls,
        width: int,
        height: int,
        min_pixels: int = QWEN_MIN_PIXELS,
        max_pixels: int = QWEN_MAX_PIXELS,
        factor: int = QWEN_FACTOR,
    ) -> "ImageGeometry":
        """Geometry of an image of ``width x height`` under the Qwen2.5-VL processor's resize."""
        _check_positive_int("width", width)
        _check_positive_int("height", height)
        resized_height, resized_width = smart_resize(height, width, factor, min_pixels, max_pixels)
        return cls(width, height, resized_width, resized_height)

    @classmethod
    def from_grid_thw(
        cls, width: int, height: int, grid_thw: Sequence[int] | Tensor, patch_size: int = 14
    ) -> "ImageGeometry":
        """Geometry from the processor's ``image_grid_thw`` row ``(t, h_patches, w_patches)``."""
        values = grid_thw.tolist() if isinstance(grid_thw, Tensor) else list(grid_thw)
        if len(values) != 3:
            raise ValueError(f"grid_thw must be (t, h_patches, w_patches), got {values!r}")
        _check_positive_int("patch_size", patch_size)
        _, h_patches, w_patches = (int(v) for v in values)
        return cls(width, height, w_patches * patch_size, h_patches * patch_size)

    def to_model(self, box: BoxLike) -> BoxLike:
        """Original-image pixels -> model (resized-image) pixels."""
        return _scale(box, self.resized_width / self.width, self.resized_height / self.height)

    def to_original(self, box: BoxLike) -> BoxLike:
        """Model (resized-image) pixels -> original-image pixels."""
        return _scale(box, self.width / self.resized_width, self.height / self.resized_height)

    def clip_to_original(self, box: BoxLike) -> BoxLike:
        """Clamp original-pixel box(es) to this image."""
        return clip_box(box, self.width, self.height)
