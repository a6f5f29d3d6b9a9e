"""Synthetic medical grounding data: the generator (`generate`), and the drawing, rendering and query
modules it is built from (`draw`, `render`, `query`)."""
from medloc_lightning.data.synth.generate import (
    LABELS,
    MODALITIES,
    PRESETS,
    SPLITS,
    STAMP,
    SynthConfig,
    add_arguments,
    config_from_args,
    generate,
    make_record,
    read_stamp,
    run,
    split_counts,
    stamp_args,
)

__all__ = ["LABELS", "MODALITIES", "PRESETS", "SPLITS", "STAMP", "SynthConfig", "add_arguments", "config_from_args",
           "generate", "make_record", "read_stamp", "run", "split_counts", "stamp_args"]
