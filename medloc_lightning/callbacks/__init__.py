"""Lightning callbacks: the τ curriculum (`ThresholdCurriculumCallback`), its plot, TensorBoard samples, and a
progress bar over optimizer steps."""
from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback
from medloc_lightning.callbacks.curriculum_plot import CurriculumPlotCallback
from medloc_lightning.callbacks.progress import StepProgressBar
from medloc_lightning.callbacks.samples import SampleLoggingCallback

__all__ = ["CurriculumPlotCallback", "SampleLoggingCallback", "StepProgressBar", "ThresholdCurriculumCallback"]
