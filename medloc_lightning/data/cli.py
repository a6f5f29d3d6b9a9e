"""`medloc-data` (also `python -m medloc_lightning.data`): validate, inspect, convert and synthesize record files.

Plugin contract: each subcommand is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
the table below maps names to modules, imported only when that subcommand runs. A user error (an input that
fails our checks) ends with one ``medloc-data: error: ...`` line and exit status 2 (``MEDLOC_TRACEBACK=1``:
the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from medloc_lightning.user_errors import report_user_errors

PROG = "medloc-data"
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("medloc_lightning.data.schema", "check record files (fields, boxes, images); exit 1 on problems"),
    "stats": ("medloc_lightning.data.stats", "counts and box-size distribution of a record file"),
    "ham10000": ("medloc_lightning.data.converters.ham10000", "HAM10000 images + lesion masks + metadata CSV"),
    "tn3k": ("medloc_lightning.data.converters.tn3k", "TN3K thyroid ultrasound (official test split kept)"),
    "masks": ("medloc_lightning.data.converters.masks", "any images folder + binary masks folder, one query"),
    "coco": ("medloc_lightning.data.converters.coco", "COCO detection annotations ('the {category}')"),
    "vlmr1": ("medloc_lightning.data.converters.vlmr1", "VLM-R1 REC JSONL (conversations format)"),
    "synth": ("medloc_lightning.data.synth", "synthetic dermoscopy/ultrasound/x-ray grounding data"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return (f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options)\n\n"
            f"Grounding record files (JSONL): validate, inspect, convert public datasets, synthesize.\n\n"
            f"commands:\n{rows}\n")


def build_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand, filled in by its module's ``add_arguments``."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"{PROG}: unknown command {name!r}\n\n{_usage()}", end="", file=sys.stderr)
        return 2
    try:
        parser = build_parser(name)
    except ModuleNotFoundError as err:
        if err.name != COMMANDS[name][0]:
            raise
        print(f"{PROG}: the '{name}' command is not available in this installation ({err})", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as exit_:  # --help (0) or a usage error (2)
        return int(exit_.code or 0)
    try:
        return int(report_user_errors(PROG, lambda: args._run(args)))
    except SystemExit as exit_:  # a user error, reported in one line
        return int(exit_.code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
