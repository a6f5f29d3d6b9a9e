"""TRL integration: MedLoc-R1's reward and curriculum as a TRL ``GRPOTrainer`` reward function.

It reads TRL's trainer state and, under ``torch.distributed``, gathers every rank's IoUs before the curriculum
observes them, so it lives here rather than beside the pure reward functions (`medloc_lightning.rewards`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import Tensor

from medloc_lightning import distributed
from medloc_lightning.boxes import QWEN_FACTOR, QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, ImageGeometry, box_iou
from medloc_lightning.parsing import parse_box
from medloc_lightning.rewards import GroundingReward, check_unit

__all__ = ["Schedule", "TRLRewardFunction"]


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
        self.fixed_tau = check_unit("tau", tau)
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
    """All ranks' IoUs, in rank order (ranks may score different numbers of completions)."""
    return torch.cat([t for rank in distributed.gather_ragged([ious], dtype=ious.dtype) for t in rank])
