"""Lightning callbacks: the τ curriculum (`ThresholdCurriculumCallback`), its plot, and TensorBoard samples."""
from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback
from medloc_lightning.callbacks.curriculum_plot import CurriculumPlotCallback
from medloc_lightning.callbacks.samples import SampleLoggingCallback

__all__ = ["CurriculumPlotCallback", "SampleLoggingCallback", "ThresholdCurriculumCallback"]
