"""Synthetic medical grounding data: the generator (`generate`), and the drawing, rendering and query
modules it is built from (`draw`, `render`, `query`)."""
from medloc_lightning.data.synth.generate import (
    LABELS,
    MODALITIES,
    PRESETS,
    SPLITS,
    SynthConfig,
    add_arguments,
    config_from_args,
    generate,
    make_record,
    run,
    split_counts,
)

__all__ = ["LABELS", "MODALITIES", "PRESETS", "SPLITS", "SynthConfig", "add_arguments", "config_from_args",
           "generate", "make_record", "run", "split_counts"]
