"""`CurriculumPlotCallback`: a PNG of τ, r̄, σ and m̄ over the optimizer steps, with P_τ, S_τ and Δ drawn on
their panels and the raises marked.

Written at the end of training to ``<log_dir>/curriculum.png`` (the logger's version folder, next to the
TensorBoard events), and its path printed. It reads the schedule of the run's `ThresholdCurriculumCallback`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback
from medloc_lightning.plotting import plot_curves

SERIES = ("tau", "hit_rate", "reward_std", "iou_margin")
THRESHOLDS = {  # series -> (the check it enters, the schedule's stat that bounds it, legend label)
    "hit_rate": ("accuracy", "min_hit_rate", r"$P_\tau$: needs $\bar{r} \geq P_\tau$"),
    "reward_std": ("stability", "max_reward_std", r"$S_\tau$: needs $\sigma \leq S_\tau$"),
    "iou_margin": ("margin", "min_margin", r"$\Delta$: needs $\bar{m} \geq \Delta$"),
}


class CurriculumPlotCallback(pl.Callback):
    """Record the curriculum's window statistics once per training batch and plot them at the end.

    The values are taken before each training batch (so after the previous step's ``observe``, whatever the
    callbacks' order) and once more at the end. A JSON copy of the series sits next to the PNG.
    """

    def __init__(self, filename: str = "curriculum.png", every_n_steps: int = 1) -> None:
        super().__init__()
        self.filename, self.every_n_steps = filename, max(1, int(every_n_steps))
        self.history: dict[str, list[float]] = {"step": [], **{k: [] for k in SERIES}}
        self.events: list[float] = []  # global steps at which tau rose
        self._raises = 0
        self.path: Path | None = None

    def _record(self, trainer: pl.Trainer) -> None:
        curriculum = ThresholdCurriculumCallback.find(trainer)
        step = trainer.global_step
        if curriculum is None or curriculum.schedule.num_steps == 0:
            return
        if self.history["step"] and self.history["step"][-1] == step:
            return
        stats = curriculum.schedule.stats
        if curriculum.schedule.num_raises > self._raises:
            self.events.append(step)
            self._raises = curriculum.schedule.num_raises
        self.history["step"].append(step)
        for key in (*SERIES, *(stat for _, stat, _ in THRESHOLDS.values())):
            if key in stats:  # baselines have no thresholds
                self.history.setdefault(key, []).append(stats[key])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._record(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer)
        curriculum = ThresholdCurriculumCallback.find(trainer)
        if curriculum is None or not trainer.is_global_zero or not self.history["step"]:
            return
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / self.filename
        schedule = curriculum.schedule
        steps = self.history["step"]
        checks = getattr(schedule, "checks", ())
        thresholds: dict[str, tuple[str, float | list[float]]] = {}
        for name, (check, stat, label) in THRESHOLDS.items():
            values = self.history.get(stat, [])
            if check in checks and len(values) == len(steps):
                thresholds[name] = (label, values[0] if len(set(values)) == 1 else values)  # Δ is a constant
        if hasattr(schedule, "tau_target"):
            thresholds["tau"] = (r"$\tau$ target", schedule.tau_target)
        title = (f"{type(schedule).__name__}: " + r"$\tau$" + f" {self.history['tau'][0]:.2f} → {schedule.tau:.2f}, "
                 f"{schedule.num_raises} raise(s)")
        plot_curves({k: self.history[k] for k in SERIES}, x=steps, path=self.path, title=title,
                    events=self.events, thresholds=thresholds)
        clean = {k: [None if isinstance(v, float) and math.isnan(v) else v for v in vs]
                 for k, vs in self.history.items()}
        self.path.with_suffix(".json").write_text(json.dumps({**clean, "events": self.events}))
        rank_zero_info(f"[curriculum] plot of tau, hit rate, reward std and IoU margin written to {self.path}")

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}, "events": list(self.events),
                "raises": self._raises}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict["history"].items()}
        self.events, self._raises = list(state_dict["events"]), int(state_dict["raises"])
