"""Converters from public dataset layouts to grounding records, one module per source (each a `medloc-data`
subcommand exposing ``add_arguments(parser)`` and ``run(args) -> int``); shared plumbing in ``common`` and
mask-to-box maths in ``maskops``."""
