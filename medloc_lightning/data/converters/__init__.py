"""Converters from public dataset layouts to grounding records, one module per source.

Each is a typed function, ``convert_<source>(..., out, ...) -> ConversionReport``, and a `medloc-data` subcommand
(``add_arguments(parser)`` and ``run(args) -> int``, a thin layer over the function). Shared plumbing (the output
folder, splits, reports) lives in ``common``, the mask-to-box maths in ``maskops``.
"""
from medloc_lightning.data.converters.coco import convert_coco
from medloc_lightning.data.converters.common import ConversionError, ConversionReport, NothingWritten, Skip
from medloc_lightning.data.converters.ham10000 import convert_ham10000
from medloc_lightning.data.converters.masks import convert_masks
from medloc_lightning.data.converters.tn3k import convert_tn3k
from medloc_lightning.data.converters.vlmr1 import convert_vlmr1

__all__ = ["ConversionError", "ConversionReport", "NothingWritten", "Skip", "convert_coco", "convert_ham10000",
           "convert_masks", "convert_tn3k", "convert_vlmr1"]
