"""Step-size schedules δ for raising the IoU threshold τ (MedLoc-R1 "Progressive Threshold Scheduling").

Each schedule maps (k, p) to δ, where k is the number of raises so far (0 for the first raise) and
p = (τ − tau_start)/(tau_target − tau_start) ∈ [0, 1] is the curriculum progress at the current τ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from medloc_lightning.errors import ConfigError


class StepSchedule:
    """Base class of δ schedules; subclasses implement ``__call__(num_raises, progress) -> δ``."""

    def __call__(self, num_raises: int, progress: float) -> float:
        raise NotImplementedError


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return value


@dataclass(frozen=True)
class PiecewiseStep(StepSchedule):
    """The k-th raise uses ``steps[min(k, len(steps) - 1)]``; the paper's default is (0.15, 0.10, 0.05)."""

    steps: Sequence[float] = (0.15, 0.10, 0.05)

    def __post_init__(self) -> None:
        if isinstance(self.steps, (int, float)):
            object.__setattr__(self, "steps", (self.steps,))
        if len(self.steps) == 0:
            raise ConfigError("steps must hold at least one step size")
        object.__setattr__(self, "steps", tuple(_positive(f"steps[{i}]", s) for i, s in enumerate(self.steps)))

    def __call__(self, num_raises: int, progress: float) -> float:
        return self.steps[min(num_raises, len(self.steps) - 1)]


@dataclass(frozen=True)
class DecayingStep(StepSchedule):
    """Base of the schedules that decay δ from ``delta0`` (at p = 0) to ``min_step`` (at p = 1)."""

    delta0: float = 0.15
    min_step: float = 0.05

    def __post_init__(self) -> None:
        _positive("delta0", self.delta0)
        _positive("min_step", self.min_step)
        if self.min_step > self.delta0:
            raise ConfigError(f"min_step ({self.min_step}) must not exceed delta0 ({self.delta0})")


@dataclass(frozen=True)
class LinearStep(DecayingStep):
    """δ = max(min_step, delta0·(1 − p)): big early steps, small late ones, one parameter to tune."""

    def __call__(self, num_raises: int, progress: float) -> float:
        return max(self.min_step, self.delta0 * (1.0 - progress))


@dataclass(frozen=True)
class CosineStep(DecayingStep):
    """δ = min_step + (delta0 − min_step)·(1 + cos πp)/2."""

    def __call__(self, num_raises: int, progress: float) -> float:
        return self.min_step + (self.delta0 - self.min_step) * (1.0 + math.cos(math.pi * progress)) / 2.0
