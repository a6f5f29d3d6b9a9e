"""IoU-threshold schedules: MedLoc-R1's performance-aware curriculum and the baselines it is compared with.

This module is the one place that spells out the paper's symbols.

- τ: the IoU threshold of the binary reward 1[IoU ≥ τ]; it moves from ``tau_start`` to ``tau_target``. A hit
  is decided in float32 (the IoU and τ both rounded to float32), exactly as `medloc_lightning.rewards` decides
  it, so an IoU that earns the reward is a hit here too, ties included.
- An observed step is one ``observe`` call: `ThresholdCurriculumCallback` makes one per training batch that
  ends with an optimizer step, its gradient-accumulation micro-batches pooled. A GRPO batch reused for μ > 1
  optimizer steps is one observed step, so N and `IntervalSchedule`'s ``every`` count batches there, not
  optimizer steps.
- The sliding window W holds the last N = ``window`` entries. What one entry is, is ``window_unit``:
  - ``"step"`` (default): every IoU of one observed step, all prompts, completions and ranks pooled. The
    window spans the last N steps, as the paper's text says.
  - ``"group"``: one prompt's G completions, as the paper's formula indexes the window (one ground-truth
    box b*(t) per entry). A step of B prompts adds B entries, so N counts prompts.
- Every statistic is taken over the window's entries against the *current* τ:
  - r̄ (``hit_rate``): the mean over entries of each entry's fraction of IoUs ≥ τ.
  - σ (``reward_std``): the population std, over entries, of those per-entry hit rates.
  - m̄ (``iou_margin``): the mean over entries of each entry's mean IoU, minus τ.
- What σ measures depends on the unit, and so does the S_τ it is held to. Per step, σ is the spread of the
  step-to-step hit rate (temporal stability); each step averages B·G·world completions, so σ shrinks about
  as 1/√B and a given S_τ means something else at another batch size or world size. Per group, σ is the
  spread across prompts, including the binomial noise of G draws (about √(p(1 − p)/G): 0.14 at p = 0.8,
  G = 8) and the spread of prompt difficulty; it does not depend on B or the world size, but the default
  S_τ of 0.10–0.20 (ours: the paper only says S_τ is "gradually expanded") then passes only when nearly
  every group hits alike (p near 1). The default stays ``"step"``: it is the paper's wording, it keeps runs
  and checkpoints as they were, and the shipped S_τ values were set for it.
- P_τ (``min_hit_rate``) and S_τ (``max_reward_std``) are given at tau_start and at tau_target and
  interpolated linearly in τ (a float is a constant). Δ (``min_margin``) is constant.
- The criterion C = [r̄ ≥ P_τ] ∧ [σ ≤ S_τ] ∧ [m̄ ≥ Δ] (the enabled checks only) is evaluated once per
  observed step, and only when the window is full. When it holds, τ ← min(τ + δ, tau_target), δ from a step
  schedule (`medloc_lightning.curriculum.steps`), and the oldest round(refresh·N) entries are dropped
  (semi-preserved refresh at 0.5, full replacement at 1.0; round half up). With ``rescore_on_raise`` (the
  default) the kept entries are re-scored at the new τ; without it they keep the hits they earned at the old
  τ until they leave the window (m̄ is always measured against the current τ).

The core imports no Lightning: `ThresholdCurriculumCallback` is the thin adapter.
"""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any, Literal, Sequence, get_args

import numpy as np

from medloc_lightning.curriculum.steps import PiecewiseStep, StepSchedule
from medloc_lightning.errors import CheckpointError, ConfigError

Check = Literal["accuracy", "stability", "margin"]
CHECKS: tuple[str, ...] = get_args(Check)
WindowUnit = Literal["step", "group"]
WINDOW_UNITS: tuple[str, ...] = get_args(WindowUnit)


def _check_tau(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be an IoU threshold in [0, 1], got {value!r}")
    return value


def _as_pair(name: str, value: float | Sequence[float], low: float, high: float) -> tuple[float, float]:
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2:
        raise ConfigError(f"{name} must be a float or a pair (at tau_start, at tau_target), got {value!r}")
    out = tuple(float(v) for v in pair)
    if not all(low <= v <= high for v in out):
        raise ConfigError(f"{name} values must lie in [{low}, {high}], got {value!r}")
    return out  # type: ignore[return-value]


def _check_progress(progress: float) -> float:
    value = float(progress)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"progress must be the fraction of training done, in [0, 1], got {progress!r}")
    return value


def _plain(value: Any) -> Any:
    """A setting as plain containers (comparable, and loadable with ``weights_only=True``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"kind": type(value).__name__, **fields}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"kind": type(value).__name__}


def _outside(tau: float, low: float, high: float) -> str | None:
    return None if low <= tau <= high else f"lies outside [{low}, {high}]"


class CurriculumMismatchError(CheckpointError):
    """A saved schedule state that belongs to another schedule (kind or settings) than the configured one."""


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _float32(ious: Any) -> np.ndarray:
    if hasattr(ious, "detach"):
        import torch  # only reached with a tensor, so torch is already loaded

        return ious.detach().to("cpu", torch.float32).numpy()
    return np.asarray(ious, dtype=np.float32)


def as_iou_array(ious: Any) -> np.ndarray:
    """Flatten one entry's IoUs (tensor, array or nested list, any shape) to float32; reject bad values."""
    arr = _float32(ious).reshape(-1)
    if arr.size == 0:
        raise ValueError("ious is empty: observe() needs at least one IoU per entry")
    if not np.isfinite(arr).all():
        raise ValueError("ious contains NaN or inf: an unparsed answer must be passed as IoU 0")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"ious must lie in [0, 1], got values in [{arr.min()}, {arr.max()}]")
    return arr


def as_iou_groups(ious: Any) -> list[np.ndarray]:
    """One step's IoUs as groups: a list or tuple holds one group per element (lengths may differ); an array
    or tensor holds its groups along the last axis ([B, G]: B groups; 1-D: one group)."""
    if isinstance(ious, (list, tuple)) and any(np.ndim(x) > 0 for x in ious):
        groups = [as_iou_array(x) for x in ious]
    else:
        arr = _float32(ious)
        groups = [as_iou_array(arr)] if arr.ndim <= 1 else [as_iou_array(g) for g in arr.reshape(-1, arr.shape[-1])]
    if not groups:
        raise ValueError("ious is empty: observe() needs at least one group per step")
    return groups


def hit_fraction(ious: np.ndarray, tau: float) -> float:
    """The fraction of float32 ``ious`` with IoU ≥ τ, τ rounded to float32 as the reward rounds it."""
    return float(np.count_nonzero(ious >= np.float32(tau))) / ious.size


class ThresholdSchedule:
    """Base class: a τ that moves as IoUs are observed, with window statistics for monitoring.

    ``observe(ious, progress)`` takes one observed step's IoUs and returns True when τ rose: any shape with
    ``window_unit="step"``, groups of one prompt's completions with ``"group"`` (see `as_iou_groups`).
    ``progress`` is the fraction of training done *after* this step, in [0, 1]; only progress-driven
    schedules need it. Baselines keep the same window so their statistics are logged alike.
    """

    settings: Any
    """The constructor's arguments, checked: a frozen dataclass per schedule (``Settings``), saved with the state
    so that a checkpoint is never resumed under another schedule. Each reads as an attribute too."""

    def __init__(self, tau: float, settings: Any) -> None:
        self.settings = settings
        self._tau = _check_tau("tau", tau)
        # one window entry per step or group: (float32 IoUs, hit fraction, mean IoU)
        self._entries: deque[tuple[np.ndarray, float, float]] = deque(maxlen=self.window)
        self.num_steps = 0
        """Observed steps (``observe`` calls)."""
        self.num_raises = 0
        self.events: list[dict[str, float]] = []

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings")
        if settings is not None and name in settings.__dataclass_fields__:
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def tau(self) -> float:
        return self._tau

    # --- window -----------------------------------------------------------------------------------
    def _push(self, arr: np.ndarray) -> None:
        self._entries.append((arr, hit_fraction(arr, self._tau), float(arr.mean(dtype=np.float64))))

    def _rescore(self) -> None:
        """Re-read the kept entries against the current τ."""
        self._entries = deque(((a, hit_fraction(a, self._tau), m) for a, _, m in self._entries), maxlen=self.window)

    def _set_tau(self, tau: float, rescore: bool = True) -> bool:
        tau = round(tau, 10)  # 0.3 + 0.15 must be 0.45, so a chain of raises lands exactly on tau_target
        if tau == self._tau:
            return False
        self._tau = tau
        self.num_raises += 1
        self.events.append({"step": float(self.num_steps), "tau": tau})
        if rescore:
            self._rescore()
        return True

    @property
    def window_full(self) -> bool:
        return len(self._entries) == self.window

    @property
    def stats(self) -> dict[str, float]:
        """r̄, σ, m̄ of the window as it is now (NaN when it is empty), plus τ and counters."""
        n = len(self._entries)
        if n:
            hits = [h for _, h, _ in self._entries]
            hit_rate = sum(hits) / n
            reward_std = math.sqrt(max(sum((h - hit_rate) ** 2 for h in hits) / n, 0.0))
            mean_iou = sum(m for _, _, m in self._entries) / n
        else:
            hit_rate = reward_std = mean_iou = math.nan
        return {
            "tau": self._tau,
            "hit_rate": hit_rate,
            "reward_std": reward_std,
            "iou_margin": mean_iou - self._tau,
            "mean_iou": mean_iou,
            "window_fill": float(n),
            "num_raises": float(self.num_raises),
        }

    def observe(self, ious: Any, progress: float | None = None) -> bool:
        """Add one observed step's IoUs to the window, then update τ; True when τ rose. A failed observation
        (bad IoUs, bad progress, a failing update) records nothing."""
        entries = as_iou_groups(ious) if self.window_unit == "group" else [as_iou_array(ious)]
        progress = None if progress is None else _check_progress(progress)
        before = (self._tau, self._entries.copy(), self.num_steps, self.num_raises, len(self.events))
        for entry in entries:
            self._push(entry)
        self.num_steps += 1
        try:
            return self._update(progress)
        except BaseException:
            self._tau, self._entries, self.num_steps, self.num_raises, events = before
            del self.events[events:]
            raise

    def _update(self, progress: float | None) -> bool:
        return False

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python containers only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {
            "kind": type(self).__name__,
            "settings": {f.name: _plain(getattr(self.settings, f.name)) for f in dataclasses.fields(self.settings)},
            "tau": self._tau,
            "entries": [a.tolist() for a, _, _ in self._entries],
            "hits": [h for _, h, _ in self._entries],
            "num_steps": self.num_steps,
            "num_raises": self.num_raises,
            "events": [dict(e) for e in self.events],
        }

    def check_compatible(self, state: dict[str, Any]) -> None:
        """Raise :class:`CurriculumMismatchError` if ``state`` was saved by another kind of schedule or with
        other settings."""
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise CheckpointError(f"invalid curriculum state: it lacks {missing} (not saved by this version's "
                                  f"{type(self).__name__}.state_dict)")
        kind, saved, mine = state["kind"], state["settings"], self.state_dict()["settings"]
        diffs = [f"{k}: saved {saved.get(k)!r}, configured {mine.get(k)!r}" for k in sorted(saved.keys() | mine.keys())
                 if saved.get(k) != mine.get(k)]
        if kind != type(self).__name__ or diffs:
            what = f"a {kind}, the configured schedule is a {type(self).__name__}" if kind != type(self).__name__ \
                else f"a {kind} with other settings ({'; '.join(diffs)})"
            raise CurriculumMismatchError(
                f"the saved curriculum state does not match the configured schedule: it was saved by {what}. "
                f"Resume with the schedule it was trained with, or reset the curriculum explicitly "
                f"(ThresholdCurriculumCallback(reset_on_mismatch=True)).")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`: checked whole (kind, settings, τ, window IoUs) before
        anything changes, so a bad state leaves the schedule as it was."""
        self.check_compatible(state)
        tau = float(state["tau"])
        problem = None if 0.0 <= tau <= 1.0 else "must be an IoU threshold in [0, 1]"
        problem = problem or self._tau_problem(tau)
        if problem:
            raise CheckpointError(f"invalid curriculum state: tau {state['tau']!r} {problem}")
        if len(state["entries"]) > self.window:
            raise CheckpointError(f"invalid curriculum state: {len(state['entries'])} window entries for a window of "
                             f"{self.window}")
        arrays = []
        for i, ious in enumerate(state["entries"]):
            try:
                arrays.append(as_iou_array(ious))
            except ValueError as err:
                raise CheckpointError(f"invalid curriculum state: window entry {i}: {err}") from None
        hits = state["hits"]  # as earned: they differ from a re-read after a raise without rescoring
        if len(hits) != len(arrays) or not all(0.0 <= float(h) <= 1.0 for h in hits):
            raise CheckpointError(f"invalid curriculum state: hits {hits!r} for {len(arrays)} window entries")
        entries = deque(((arr, float(h), float(arr.mean(dtype=np.float64))) for arr, h in zip(arrays, hits)),
                        maxlen=self.window)
        num_steps, num_raises = int(state["num_steps"]), int(state["num_raises"])
        if num_raises < 0 or (self.window_unit == "step" and num_steps < len(entries)):
            raise CheckpointError(f"invalid curriculum state: num_steps {num_steps} and num_raises {num_raises} for "
                             f"{len(entries)} window entries")
        self._tau, self._entries, self.num_steps, self.num_raises = tau, entries, num_steps, num_raises
        self.events = [dict(e) for e in state["events"]]

    def _tau_problem(self, tau: float) -> str | None:
        """Why ``tau`` cannot be this schedule's threshold, or None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tau={self._tau:.4g}, steps={self.num_steps}, raises={self.num_raises})"


def _window(window: int, window_unit: str) -> int:
    if int(window) != window or window < 2:
        raise ConfigError(f"window must be an integer >= 2, got {window!r}")
    if window_unit not in WINDOW_UNITS:
        raise ConfigError(f"window_unit must be one of {WINDOW_UNITS}, got {window_unit!r}")
    return int(window)


def _tau_range(tau_start: float, tau_target: float) -> tuple[float, float]:
    low, high = _check_tau("tau_start", tau_start), _check_tau("tau_target", tau_target)
    if low >= high:
        raise ConfigError(f"tau_start ({low}) must be < tau_target ({high})")
    return low, high


@dataclasses.dataclass(frozen=True)
class CurriculumSettings:
    """`ThresholdCurriculum`'s settings (see its arguments)."""

    tau_start: float
    tau_target: float
    window: int
    step: StepSchedule
    min_hit_rate: tuple[float, float]
    max_reward_std: tuple[float, float]
    min_margin: float
    refresh: float
    checks: tuple[str, ...]
    window_unit: str
    rescore_on_raise: bool


class ThresholdCurriculum(ThresholdSchedule):
    """MedLoc-R1: raise τ only when the model is accurate (r̄ ≥ P_τ), stable (σ ≤ S_τ) and has margin (m̄ ≥ Δ)."""

    settings: CurriculumSettings

    def __init__(
        self,
        tau_start: float = 0.3,
        tau_target: float = 0.8,
        window: int = 30,
        step: StepSchedule | None = None,
        min_hit_rate: float | Sequence[float] = (0.8, 0.6),
        max_reward_std: float | Sequence[float] = (0.10, 0.20),
        min_margin: float = 0.10,
        refresh: float = 0.5,
        checks: Sequence[Check] = CHECKS,
        window_unit: WindowUnit = "step",
        rescore_on_raise: bool = True,
    ) -> None:
        tau_start, tau_target = _tau_range(tau_start, tau_target)
        step = PiecewiseStep() if step is None else step
        if not callable(step):
            raise ConfigError(f"step must be a step schedule such as PiecewiseStep, got {step!r}")
        if not isinstance(rescore_on_raise, bool):
            raise ConfigError(f"rescore_on_raise must be a bool, got {rescore_on_raise!r}")
        if not math.isfinite(float(min_margin)) or float(min_margin) < 0.0:
            raise ConfigError(f"min_margin must be >= 0, got {min_margin!r}")
        if not 0.0 < float(refresh) <= 1.0:
            raise ConfigError(f"refresh must lie in (0, 1], got {refresh!r}")
        checks = (checks,) if isinstance(checks, str) else tuple(checks)
        unknown = [c for c in checks if c not in CHECKS]
        if unknown:
            raise ConfigError(f"checks has unknown entries {unknown}; choose from {CHECKS}")
        super().__init__(tau_start, CurriculumSettings(
            tau_start=tau_start, tau_target=tau_target, window=_window(window, window_unit), step=step,
            min_hit_rate=_as_pair("min_hit_rate", min_hit_rate, 0.0, 1.0),
            max_reward_std=_as_pair("max_reward_std", max_reward_std, 0.0, math.inf), min_margin=float(min_margin),
            refresh=float(refresh), checks=checks, window_unit=window_unit, rescore_on_raise=rescore_on_raise))

    def _tau_problem(self, tau: float) -> str | None:
        return _outside(tau, self.tau_start, self.tau_target)

    @property
    def tau_progress(self) -> float:
        """p = (τ − tau_start)/(tau_target − tau_start): how far τ has come, not how far training has."""
        return (self._tau - self.tau_start) / (self.tau_target - self.tau_start)

    def _interp(self, pair: tuple[float, float]) -> float:
        return pair[0] + (pair[1] - pair[0]) * self.tau_progress

    @property
    def stats(self) -> dict[str, float]:
        out = super().stats
        out["min_hit_rate"] = self._interp(self.min_hit_rate)  # P_τ
        out["max_reward_std"] = self._interp(self.max_reward_std)  # S_τ
        out["min_margin"] = self.min_margin  # Δ
        return out

    def ready(self, stats: dict[str, float] | None = None) -> dict[str, bool]:
        """The outcome of each enabled check on the current window (evaluated even when it is not full)."""
        s = self.stats if stats is None else stats
        outcome = {
            "accuracy": s["hit_rate"] >= s["min_hit_rate"],
            "stability": s["reward_std"] <= s["max_reward_std"],
            "margin": s["iou_margin"] >= s["min_margin"],
        }
        return {c: outcome[c] for c in self.checks}

    def _update(self, progress: float | None) -> bool:
        if self._tau >= self.tau_target or not self.window_full or not all(self.ready().values()):
            return False
        delta = float(self.step(self.num_raises, self.tau_progress))
        if not delta > 0.0:
            raise ValueError(f"step schedule returned a non-positive step {delta!r}")
        drop = max(1, _round_half_up(self.refresh * self.window))
        for _ in range(min(drop, len(self._entries))):
            self._entries.popleft()
        return self._set_tau(min(self._tau + delta, self.tau_target), rescore=self.rescore_on_raise)


@dataclasses.dataclass(frozen=True)
class FixedSettings:
    """`FixedThreshold`'s settings."""

    tau: float
    window: int
    window_unit: str


class FixedThreshold(ThresholdSchedule):
    """A constant τ (VLM-R1 uses 0.5)."""

    settings: FixedSettings

    def __init__(self, tau: float = 0.5, window: int = 30, window_unit: WindowUnit = "step") -> None:
        tau = _check_tau("tau", tau)
        super().__init__(tau, FixedSettings(tau=tau, window=_window(window, window_unit), window_unit=window_unit))


@dataclasses.dataclass(frozen=True)
class ProgressSettings:
    """`ProgressSchedule`'s settings."""

    milestones: tuple[tuple[float, float], ...]
    window: int
    window_unit: str


class ProgressSchedule(ThresholdSchedule):
    """τ follows training progress, blind to performance: τ is the tau of the first (progress_upto, tau)
    milestone with progress ≤ progress_upto. V-Triune is ``[(0.10, 0.85), (0.25, 0.95), (1.0, 0.99)]``."""

    V_TRIUNE = ((0.10, 0.85), (0.25, 0.95), (1.0, 0.99))
    settings: ProgressSettings

    def __init__(self, milestones: Sequence[Sequence[float]] = V_TRIUNE, window: int = 30,
                 window_unit: WindowUnit = "step") -> None:
        ms = tuple(tuple(float(v) for v in m) for m in milestones)
        if not ms or any(len(m) != 2 for m in ms):
            raise ConfigError(f"milestones must be a non-empty list of (progress_upto, tau) pairs, got {milestones!r}")
        uptos = [m[0] for m in ms]
        if uptos != sorted(uptos) or len(set(uptos)) != len(uptos):
            raise ConfigError(f"milestones' progress_upto values must be strictly increasing, got {uptos}")
        if uptos[-1] < 1.0:
            raise ConfigError(f"milestones must end with progress_upto 1.0 (the end of training), got {uptos[-1]}")
        for i, (_, tau) in enumerate(ms):
            _check_tau(f"milestones[{i}] tau", tau)
        settings = ProgressSettings(milestones=ms, window=_window(window, window_unit), window_unit=window_unit)
        super().__init__(ms[0][1], settings)
    def tau_at(self, progress: float) -> float:
        for upto, tau in self.milestones:
            if progress <= upto:
                return tau
        return self.milestones[-1][1]

    def _tau_problem(self, tau: float) -> str | None:
        taus = sorted({t for _, t in self.milestones})
        return None if tau in taus else f"is none of the milestones' taus {taus}"

    def _update(self, progress: float | None) -> bool:
        if progress is None:
            raise ValueError("ProgressSchedule needs progress (fraction of training done) in observe()")
        return self._set_tau(self.tau_at(progress))


@dataclasses.dataclass(frozen=True)
class IntervalSettings:
    """`IntervalSchedule`'s settings."""

    every: int | None
    every_fraction: float | None
    delta: float
    tau_start: float
    tau_target: float
    window: int
    window_unit: str


class IntervalSchedule(ThresholdSchedule):
    """Blind raises on a clock: τ += ``delta`` every ``every`` observed steps, or every ``every_fraction`` of the
    run (which needs ``progress``), up to tau_target. The paper's fixed conservative / moderate / aggressive
    schedules, read as performance-blind."""

    settings: IntervalSettings

    def __init__(self, every: int | None = None, delta: float = 0.1, tau_start: float = 0.3,
                 tau_target: float = 0.8, window: int = 30, every_fraction: float | None = None,
                 window_unit: WindowUnit = "step") -> None:
        if (every is None) == (every_fraction is None):
            raise ConfigError(f"give exactly one of every (steps) and every_fraction (of the run), got "
                              f"every={every!r}, every_fraction={every_fraction!r}")
        if every is not None and (int(every) != every or every < 1):
            raise ConfigError(f"every must be an integer >= 1, got {every!r}")
        if every_fraction is not None and not 0.0 < every_fraction <= 1.0:
            raise ConfigError(f"every_fraction must lie in (0, 1], got {every_fraction!r}")
        if not delta > 0:
            raise ConfigError(f"delta must be > 0, got {delta!r}")
        tau_start, tau_target = _tau_range(tau_start, tau_target)
        super().__init__(tau_start, IntervalSettings(
            every=None if every is None else int(every), every_fraction=None if every_fraction is None else
            float(every_fraction), delta=float(delta), tau_start=tau_start, tau_target=tau_target,
            window=_window(window, window_unit), window_unit=window_unit))

    def _tau_problem(self, tau: float) -> str | None:
        return _outside(tau, self.tau_start, self.tau_target)

    def _update(self, progress: float | None) -> bool:
        if self.every is not None:
            if self.num_steps % self.every or self._tau >= self.tau_target:
                return False
            return self._set_tau(min(self._tau + self.delta, self.tau_target))
        if progress is None:
            raise ValueError("IntervalSchedule with every_fraction needs progress (fraction of training done)")
        raises = math.floor(float(progress) / self.every_fraction + 1e-9)  # 1e-9: 0.3 / 0.1 is 2.9999999999999996
        return self._set_tau(min(self.tau_start + raises * self.delta, self.tau_target))
