"""IoU-threshold curricula (no Lightning import): MedLoc-R1's performance-aware schedule and baselines."""
from medloc_lightning.curriculum.schedules import (
    CHECKS,
    CurriculumMismatchError,
    WINDOW_UNITS,
    FixedThreshold,
    IntervalSchedule,
    ProgressSchedule,
    ThresholdCurriculum,
    ThresholdSchedule,
)
from medloc_lightning.curriculum.steps import CosineStep, LinearStep, PiecewiseStep, StepSchedule

__all__ = [
    "CHECKS",
    "CosineStep",
    "CurriculumMismatchError",
    "FixedThreshold",
    "IntervalSchedule",
    "LinearStep",
    "PiecewiseStep",
    "ProgressSchedule",
    "StepSchedule",
    "ThresholdCurriculum",
    "ThresholdSchedule",
    "WINDOW_UNITS",
]
