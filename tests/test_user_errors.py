"""User errors end `medloc` and `medloc-data` with one `PROG: error: ...` line (traceback on request)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from medloc_lightning.cli import main
from medloc_lightning.user_errors import find_user_error

ROOT = Path(__file__).parents[1]
SMOKE = str(ROOT / "configs" / "tiny_smoke.yaml")


def _ours() -> ValueError:
    from medloc_lightning.curriculum import ThresholdCurriculum

    try:
        ThresholdCurriculum(tau_start=1.5)
    except ValueError as err:
        return err
    raise AssertionError("no error")


def test_the_user_error_is_found_inside_a_wrapping_chain():
    ours = _ours()
    try:
        try:
            raise ours
        except ValueError as inner:
            raise TypeError("Parser key 'curriculum': does not validate") from inner
    except TypeError as outer:
        assert find_user_error(outer) is ours
    assert find_user_error(ValueError("raised outside medloc")) is None
    assert find_user_error(RuntimeError("not a user error")) is None


def test_a_plain_value_error_from_inside_medloc_is_not_a_user_error():
    """Only a MedlocError counts: where an error was raised says nothing about whose mistake it was."""
    import torch

    from medloc_lightning.boxes import box_iou

    with pytest.raises(ValueError) as caught:
        box_iou(torch.zeros(2, 4), torch.zeros(3, 4))  # a caller's bug, raised by medloc's own code
    assert find_user_error(caught.value) is None


def _medloc(*args, env=None):
    return subprocess.run([sys.executable, "-m", "medloc_lightning.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                                                       "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.mark.slow
def test_medloc_prints_one_line_and_the_traceback_only_on_request():
    args = ["fit", "--config", SMOKE, "--model.init_args.num_generations", "1"]
    short = _medloc(*args)
    assert short.returncode == 2
    assert short.stderr.strip().splitlines()[-1] == ("medloc: error: num_generations must be >= 2 (GRPO compares "
                                                     "completions in a group), got 1")
    assert "Traceback" not in short.stderr
    full = _medloc(*args, env={"MEDLOC_TRACEBACK": "1"})
    assert full.returncode != 0 and "Traceback (most recent call last)" in full.stderr


def test_medloc_data_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medloc_lightning.data", "ham10000", "--images", str(tmp_path),
                           "--masks", str(tmp_path), "--metadata", str(tmp_path / "meta.csv"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"medloc-data: error: --metadata {tmp_path / 'meta.csv'}: file not found"


@pytest.mark.parametrize("extra,message", [
    (["--model.init_args.learning_rate", "-1"], "medloc: error: learning_rate must be > 0, got -1.0"),
    (["--curriculum.init_args.schedule.init_args.tau_start", "1.5"],
     "medloc: error: tau_start must be an IoU threshold in [0, 1], got 1.5"),
    (["--data", "medloc_lightning.data.GroundingDataModule", "--data.train_file", "missing.jsonl"],
     "medloc: error: train_file: record file not found: missing.jsonl"),
    (["--data", "medloc_lightning.data.GroundingDataModule", "--data.train_file", "empty.jsonl"],
     "medloc: error: train_file: empty.jsonl:0: file: holds no records (the file is empty)"),
], ids=["negative-lr", "tau_start", "missing-file", "empty-train-split"])
def test_medloc_user_errors_end_in_one_line(extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDLOC_TRACEBACK", raising=False)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["fit", "--config", SMOKE, "--data.init_args.n", "20", *extra] if "--data" not in extra
             else ["fit", "--config", SMOKE, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_medloc_error_is_a_user_error_wherever_it_was_raised():
    from medloc_lightning.errors import ConfigError, MedlocError

    err = ConfigError("--data.batch_size must be >= 1, got 0")
    assert isinstance(err, ValueError)
    assert find_user_error(err) is err  # raised outside this package's frames, still ours by type
    try:
        try:
            raise err
        except ConfigError as inner:
            raise RuntimeError("wrapped by a library") from inner
    except RuntimeError as outer:
        assert find_user_error(outer) is err
    assert find_user_error(RuntimeError("x")) is None and issubclass(ConfigError, MedlocError)
