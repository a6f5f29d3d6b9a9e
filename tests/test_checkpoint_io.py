"""`AtomicCheckpointIO`: a real `medloc fit` killed (SIGKILL) in the middle of a save keeps a loadable last.ckpt."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medloc_lightning.checkpoint_io import AtomicCheckpointIO
from medloc_lightning.checkpoints import UnsafeCheckpointError, load_checkpoint

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "slow_checkpoint_fit.py"


def test_save_replaces_the_target_and_leaves_no_temporary_file(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "step": 1}, tmp_path / "c" / "last.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "step": 2}, tmp_path / "c" / "last.ckpt")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["last.ckpt"]
    loaded = io.load_checkpoint(tmp_path / "c" / "last.ckpt")
    assert loaded["step"] == 2 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True only"):
        io.load_checkpoint(tmp_path / "c" / "last.ckpt", weights_only=False)


@pytest.mark.slow
def test_a_fit_killed_while_saving_keeps_the_previous_last_ckpt(tmp_path):
    ckpts, marker = tmp_path / "checkpoints", tmp_path / "hanging"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"""
trainer:
  max_steps: 6
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {ckpts}, filename: "{{step}}", every_n_train_steps: 1, save_top_k: -1, save_last: true}}
data:
  init_args: {{root: {tmp_path / 'data'}, n: 24, size: 64, cache_images: false}}
""")
    # a staging folder on another file system (as when /tmp is a tmpfs) catches writers that copy into place
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "SLOW_CKPT_DIR": str(ckpts), "SLOW_CKPT_MARKER": str(marker), "OMP_NUM_THREADS": "1",
           **({"TMPDIR": "/dev/shm"} if os.path.isdir("/dev/shm") else {})}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                             "--config", str(overlay)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"no save reached the hanging writer: {proc.poll()=}, {proc.stderr.read()[-2000:]!r}"
        proc.send_signal(signal.SIGKILL)  # in the middle of the second save of last.ckpt
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    checkpoint = load_checkpoint(ckpts / "last.ckpt")
    assert checkpoint["global_step"] == 1  # the previous save, whole
    assert set(checkpoint["state_dict"]) and "loops" in checkpoint
