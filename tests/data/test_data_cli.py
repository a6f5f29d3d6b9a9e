"""`medloc-data` dispatch: the plugin contract, help, errors, and the two entry points (one subprocess smoke test)."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medloc_lightning.data.cli import COMMANDS, main

EXPECTED = {"validate", "stats", "ham10000", "tn3k", "masks", "coco", "vlmr1", "synth"}


def test_every_subcommand_is_mapped_and_synth_points_at_its_module():
    assert set(COMMANDS) == EXPECTED
    assert COMMANDS["synth"][0] == "medloc_lightning.data.synth"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_module_keeps_the_plugin_contract(name, capsys):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    assert main([name, "--help"]) == 0
    assert f"usage: medloc-data {name}" in capsys.readouterr().out


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in EXPECTED)
    assert main([]) == 2


def test_unknown_command_and_bad_options_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["masks", "--images", "x"]) == 2
    assert "the following arguments are required" in capsys.readouterr().err


def test_fatal_input_errors_exit_2(tmp_path, capsys):
    assert main(["tn3k", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert f"error: --root {tmp_path / 'nope'}: not a folder" in capsys.readouterr().err


def test_module_and_console_script_entry_points():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    module = subprocess.run([sys.executable, "-m", "medloc_lightning.data", "--help"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert module.returncode == 0 and "ham10000" in module.stdout
    script = shutil.which("medloc-data", path=str(Path(sys.executable).parent)) or shutil.which("medloc-data")
    assert script, "the medloc-data console script is not installed (pip install -e .)"
    console = subprocess.run([script, "validate", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert console.returncode == 0 and "usage: medloc-data validate" in console.stdout
