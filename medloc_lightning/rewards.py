"""Grounding rewards from IoUs: threshold, raw IoU, gated IoU, a blend, and the format reward (pure torch).

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
import warnings
from typing import Any, Literal, Sequence, get_args

import torch
from torch import Tensor

from medloc_lightning.errors import ConfigError
from medloc_lightning.parsing import has_valid_format

__all__ = [
    "REWARD_KINDS",
    "GroundingReward",
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


def check_unit(name: str, value: float) -> float:
    """``value`` as a float, checked to be a number in [0, 1] (a threshold, a weight, a blend)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def hits(ious: Tensor, tau: float) -> Tensor:
    """Where IoU >= tau, decided in float32 (see the module docstring); ``ious`` already checked."""
    tau32 = torch.tensor(check_unit("tau", tau), dtype=torch.float32, device=ious.device)
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
    alpha = check_unit("alpha", alpha)
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
            raise ConfigError(f"kind must be one of {REWARD_KINDS}, got {self.kind!r}")
        for name in ("accuracy_weight", "format_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        check_unit("blend_alpha", self.blend_alpha)
        if not isinstance(self.require_think, bool):
            raise ConfigError(f"require_think must be a bool, got {self.require_think!r}")

    def accuracy(self, ious: Tensor | Sequence[float], tau: float) -> Tensor:
        """The accuracy reward of this ``kind``."""
        if self.kind == "threshold":
            return threshold_reward(ious, tau)
        if self.kind == "gated_iou":
            return gated_iou_reward(ious, tau)
        if self.kind == "blend":
            return blended_reward(ious, tau, self.blend_alpha)
        check_unit("tau", tau)  # unused by "iou", but a bad tau is still a caller bug
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


def __getattr__(name: str) -> Any:
    if name == "TRLRewardFunction":  # its home until it moved to the integrations
        warnings.warn("medloc_lightning.rewards.TRLRewardFunction moved to medloc_lightning.integrations.trl; the old "
                      "import path will be removed in the next release", DeprecationWarning, stacklevel=2)
        from medloc_lightning.integrations.trl import TRLRewardFunction

        return TRLRewardFunction
    raise AttributeError(f"module 'medloc_lightning.rewards' has no attribute {name!r}")
