"""Grounding rewards from IoUs: threshold, raw IoU, gated IoU, a blend, the format reward, and TRL's adapter.

Threshold convention: a prediction *hits* at threshold tau when ``IoU >= tau`` (MedLoc-R1 and V-Triune
use >=; VLM-R1's evaluation and its old binary reward use a strict ``> 0.5``). Curriculum, rewards and
metrics all use >=. The reward and the curriculum decide a hit in one precision, float32 (IoU and tau both
rounded to float32), so an IoU that falls exactly on tau earns the reward and counts as a curriculum hit alike.

A completion with no parseable box has IoU 0 (the caller passes 0), so it gets accuracy 0 under every
kind (for ``threshold`` and ``blend`` with tau = 0 it still hits, since 0 >= 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, get_args

import torch
from torch import Tensor

from medloc_lightning.boxes import QWEN_FACTOR, QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, ImageGeometry, box_iou
from medloc_lightning.parsing import has_valid_format, parse_box

__all__ = [
    "REWARD_KINDS",
    "GroundingReward",
    "TRLRewardFunction",
    "blended_reward",
    "format_reward",
    "gated_iou_reward",
    "iou_reward",
    "threshold_reward",
]

RewardKind = Literal["threshold", "iou", "gated_iou", "blend"]
REWARD_KINDS: tuple[str, ...] = get_args(RewardKind)


def _as_ious(ious: Tensor | Sequence[float]) -> Tensor:
    """Float tensor of IoUs, checked to lie in [0, 1] (NaN is an error, not a silent 0)."""
    ious = torch.as_tensor(ious)
    if not ious.is_floating_point():
        ious = ious.to(torch.get_default_dtype())
    if ious.numel() and not bool(((ious >= 0) & (ious <= 1)).all()):
        raise ValueError(f"ious must lie in [0, 1] (no NaN), got min {ious.min().item()} max {ious.max().item()}")
    return ious


def _check_unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def hits(ious: Tensor, tau: float) -> Tensor:
    """Where IoU >= tau, decided in float32 (see the module docstring); ``ious`` already checked."""
    tau32 = torch.tensor(_check_unit("tau", tau), dtype=torch.float32, device=ious.device)
    return ious.to(torch.float32) >= tau32


def threshold_reward(ious: Tensor | Sequence[float], tau: float) -> Tensor:
    """MedLoc-R1's accuracy reward: 1 where IoU >= tau, else 0."""
    ious = _as_ious(ious)
    return hits(ious, tau).to(ious.dtype)


def iou_reward(ious: Tensor | Sequence[float]) -> Tensor:
    """The continuous IoU itself (VLM-R1's current REC accuracy reward)."""
    return _as_ious(ious).clone()


def gated_iou_reward(ious: Tensor | Sequence[float], tau: float) -> Tensor:
    """V-Triune's gated reward: IoU where IoU >= tau, else 0."""
    ious = _as_ious(ious)
    return ious * hits(ious, tau)


def blended_reward(ious: Tensor | Sequence[float], tau: float, alpha: float = 0.5) -> Tensor:
    """(1 - alpha) * threshold + alpha * IoU: the binary/continuous blend MedLoc-R1 names as future work."""
    ious = _as_ious(ious)
    alpha = _check_unit("alpha", alpha)
    return (1.0 - alpha) * hits(ious, tau).to(ious.dtype) + alpha * ious


def format_reward(texts: Sequence[str], require_think: bool = True) -> Tensor:
    """1.0 per text that `parsing.has_valid_format` accepts, else 0.0 (float32 [len(texts)])."""
    return torch.tensor([float(has_valid_format(t, require_think)) for t in texts], dtype=torch.float32)


@dataclass
class GroundingReward:
    """Weighted accuracy (of ``kind``) + format reward, computed from IoUs and the completion texts.

    ``reward(ious, tau, texts)`` returns ``(total, {"accuracy": ..., "format": ...})``, each shaped like
    ``ious``. The format part is computed whenever ``texts`` is given (for logging) and is zeros otherwise.
    """

    kind: RewardKind = "threshold"
    accuracy_weight: float = 1.0
    format_weight: float = 0.0
    blend_alpha: float = 0.5
    require_think: bool = True

    def __post_init__(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise ValueError(f"kind must be one of {REWARD_KINDS}, got {self.kind!r}")
        for name in ("accuracy_weight", "format_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        _check_unit("blend_alpha", self.blend_alpha)
        if not isinstance(self.require_think, bool):
            raise ValueError(f"require_think must be a bool, got {self.require_think!r}")

    def accuracy(self, ious: Tensor | Sequence[float], tau: float) -> Tensor:
        """The accuracy reward of this ``kind``."""
        if self.kind == "threshold":
            return threshold_reward(ious, tau)
        if self.kind == "gated_iou":
            return gated_iou_reward(ious, tau)
        if self.kind == "blend":
            return blended_reward(ious, tau, self.blend_alpha)
        _check_unit("tau", tau)  # unused by "iou", but a bad tau is still a caller bug
        return iou_reward(ious)

    def __call__(
        self, ious: Tensor | Sequence[float], tau: float, texts: Sequence[str] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        accuracy = self.accuracy(ious, tau)
        if texts is None:
            if self.format_weight > 0:
                raise ValueError("texts are required when format_weight > 0 (the format reward reads them)")
            fmt = torch.zeros_like(accuracy)
        else:
            if len(texts) != accuracy.numel():
                raise ValueError(f"got {len(texts)} texts for {accuracy.numel()} IoUs")
            fmt = format_reward(texts, self.require_think).to(accuracy).reshape(accuracy.shape)
        total = self.accuracy_weight * accuracy + self.format_weight * fmt
        return total, {"accuracy": accuracy, "format": fmt}


class Schedule(Protocol):
    """What `TRLRewardFunction` needs from a curriculum (every `medloc_lightning.curriculum` schedule)."""

    @property
    def tau(self) -> float: ...

    def observe(self, ious: Any, progress: float | None = None) -> bool: ...


class TRLRewardFunction:
    """Our reward (and optional curriculum) as a TRL reward function: ``(prompts, completions, **cols)``.

    Each call scores the completions against the dataset column ``bbox_column`` (per row: 4 numbers in
    original pixels, or a string holding them, e.g. VLM-R1's ``"<answer>[x1, y1, x2, y2]</answer>"``).
    When both ``size_columns`` (original width, height) are present, predicted boxes are read as
    Qwen2.5-VL resized-image pixels and mapped back with `ImageGeometry.from_size` (pass the
    ``min_pixels``/``max_pixels`` your processor uses); without them predictions are taken to be in the
    ground truth's pixels already. An unparseable completion has IoU 0.

    With a ``schedule``, rewards use ``schedule.tau``, and *after* scoring the call's IoUs are observed
    (all-gathered first under torch.distributed, so every rank's schedule sees the same stream) with
    ``progress = global_step / max_steps`` from TRL's ``trainer_state``. TRL calls reward functions once
    per generation batch, i.e. once per optimizer step with its default ``steps_per_generation``.

    TRL also calls reward functions on evaluation rollouts, and only training rollouts may move τ. By default
    the ``trainer_state`` tells them apart: TRL adds each training generation's tokens to
    ``num_input_tokens_seen`` before scoring it and leaves the count alone when it evaluates, so a call whose
    count has not grown since the previous call is an evaluation call, and is scored but not observed. All
    ranks see the same count, so they agree. ``is_training`` (e.g. ``lambda: trainer.model.training``)
    overrides that rule; a call without ``trainer_state`` (not from a Trainer) is observed.
    """

    def __init__(
        self,
        reward: GroundingReward | None = None,
        schedule: Schedule | None = None,
        tau: float = 0.5,
        bbox_column: str = "solution",
        size_columns: tuple[str, str] | None = ("width", "height"),
        min_pixels: int = QWEN_MIN_PIXELS,
        max_pixels: int = QWEN_MAX_PIXELS,
        factor: int = QWEN_FACTOR,
        name: str = "grounding_reward",
        is_training: Callable[[], bool] | None = None,
    ) -> None:
        self.reward = reward if reward is not None else GroundingReward()
        self.schedule = schedule
        self.fixed_tau = _check_unit("tau", tau)
        if size_columns is not None and len(size_columns) != 2:
            raise ValueError(f"size_columns must be (width_column, height_column) or None, got {size_columns!r}")
        self.bbox_column = bbox_column
        self.size_columns = size_columns
        self.min_pixels, self.max_pixels, self.factor = min_pixels, max_pixels, factor
        self.is_training = is_training
        self._tokens_seen = 0.0
        self.__name__ = name  # TRL names the reward's logged metrics after it

    @property
    def tau(self) -> float:
        """The threshold the next call will reward against."""
        return float(self.schedule.tau) if self.schedule is not None else self.fixed_tau

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        texts = [_completion_text(c, i) for i, c in enumerate(completions)]
        ious = self.ious(texts, kwargs)
        tau = self.tau
        total, _ = self.reward(ious, tau, texts)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric("curriculum/tau", tau)
            log_metric("curriculum/mean_iou", float(ious.mean()) if ious.numel() else 0.0)
        if self.schedule is not None and self._training_call(kwargs.get("trainer_state")):
            self.schedule.observe(_gather(ious), progress=_progress(kwargs.get("trainer_state")))
        return total.tolist()

    def _training_call(self, trainer_state: Any) -> bool:
        """Whether this call scores training rollouts (see the class docstring)."""
        if self.is_training is not None:
            return bool(self.is_training())
        tokens = getattr(trainer_state, "num_input_tokens_seen", None)
        if tokens is None:
            return True
        grew, self._tokens_seen = float(tokens) > self._tokens_seen, max(self._tokens_seen, float(tokens))
        return grew

    def ious(self, texts: Sequence[str], columns: Mapping[str, Any]) -> Tensor:
        """Float64 IoU per completion, in original pixels (0 where no box parses)."""
        if self.bbox_column not in columns:
            raise ValueError(f"reward column {self.bbox_column!r} missing; got columns {sorted(columns)}")
        targets = columns[self.bbox_column]
        if len(targets) != len(texts):
            raise ValueError(f"{len(texts)} completions but {len(targets)} rows in column {self.bbox_column!r}")
        target = torch.tensor([_target_box(t, self.bbox_column, i) for i, t in enumerate(targets)],
                              dtype=torch.float64).reshape(-1, 4)
        nan_box = (math.nan,) * 4
        geometries = self._geometries(columns, len(texts))
        preds = []
        for i, text in enumerate(texts):
            box = parse_box(text)
            if box is not None and geometries is not None:
                box = geometries[i].to_original(box)
            preds.append(box if box is not None else nan_box)
        return box_iou(torch.tensor(preds, dtype=torch.float64).reshape(-1, 4), target)

    def _geometries(self, columns: Mapping[str, Any], n: int) -> list[ImageGeometry] | None:
        if self.size_columns is None:
            return None
        present = [c for c in self.size_columns if c in columns]
        if not present:
            return None
        if len(present) == 1:
            raise ValueError(f"size columns {self.size_columns!r}: only {present[0]!r} is present; need both")
        widths, heights = (columns[c] for c in self.size_columns)
        if len(widths) != n or len(heights) != n:
            raise ValueError(f"size columns {self.size_columns!r} must have one value per completion ({n})")
        geometries = []
        for i, (w, h) in enumerate(zip(widths, heights)):
            try:
                geometries.append(ImageGeometry.from_size(
                    int(w), int(h), self.min_pixels, self.max_pixels, self.factor))
            except (TypeError, ValueError) as err:
                raise ValueError(f"row {i}: bad image size in {self.size_columns!r} ({w!r}, {h!r}): {err}") from err
        return geometries


def _completion_text(completion: Any, index: int) -> str:
    """The text of a TRL completion: a string, or conversational messages (the last one's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content")
        if content is None:  # e.g. a message that only holds tool calls: no box
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):  # multimodal content parts: [{"type": "text", "text": ...}]
            return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    raise ValueError(f"completion {index}: expected a str or a list of messages with 'content', got {completion!r:.200}")


def _target_box(value: Any, column: str, index: int) -> tuple[float, float, float, float]:
    box = parse_box(value) if isinstance(value, str) else value
    try:
        numbers = tuple(float(v) for v in box)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"row {index}: column {column!r} must hold a box [x1, y1, x2, y2], got {value!r:.200}")
    return numbers  # type: ignore[return-value]


def _progress(trainer_state: Any) -> float | None:
    """``global_step / max_steps`` from a transformers TrainerState, or None when unknown."""
    step = getattr(trainer_state, "global_step", None)
    max_steps = getattr(trainer_state, "max_steps", None)
    if step is None or not max_steps:
        return None
    return min(max(float(step) / float(max_steps), 0.0), 1.0)


def _gather(ious: Tensor) -> Tensor:
    """All ranks' IoUs (in rank order) when torch.distributed is initialized, else ``ious``."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return ious
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, ious.tolist())  # lengths may differ between ranks
    return torch.tensor([v for part in parts for v in part], dtype=ious.dtype)
