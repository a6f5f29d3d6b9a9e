"""`AtomicCheckpointIO`: a real `medloc fit` killed (SIGKILL) in the middle of a save keeps a loadable last.ckpt."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from medloc_lightning.checkpointing.plugin import AtomicCheckpointIO
from medloc_lightning.checkpointing.loading import UnsafeCheckpointError, load_checkpoint

ROOT = Path(__file__).parents[2]
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


def _fit_one_step(folder: Path, plugins: list) -> int:
    """The mode of the ``last.ckpt`` a one-step fit writes into ``folder``."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    saver = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, plugins=plugins,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[saver])
    trainer.fit(BoringModel())
    return stat.S_IMODE((folder / "last.ckpt").stat().st_mode)


def test_checkpoints_get_the_mode_lightnings_own_writer_gives(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    assert _fit_one_step(tmp_path / "atomic", [AtomicCheckpointIO()]) == _fit_one_step(tmp_path / "lightning", []) \
        == 0o666 & ~umask
    for umask in (0o022, 0o027):  # 0644 (teammates read it) and 0640: the umask at save time decides
        previous = os.umask(umask)
        try:
            mode = _fit_one_step(tmp_path / f"umask{umask:o}", [AtomicCheckpointIO()])
        finally:
            os.umask(previous)
        assert mode == 0o666 & ~umask, oct(mode)


def test_a_save_removes_the_temporary_files_a_killed_save_of_the_same_target_left(tmp_path):
    import tempfile

    folder = tmp_path / "c"
    folder.mkdir()
    stale = [tempfile.mkstemp(dir=folder, prefix=".last.ckpt.", suffix=".tmp") for _ in range(2)]  # the writer's names
    for handle, _ in stale:
        os.close(handle)
    others = [".epoch=1.ckpt.abcd1234.tmp", ".last.ckpt.notes", "last.ckpt.abcd1234.tmp", ".last.ckpt.abc.tmp", "x.txt"]
    for name in others:
        (folder / name).write_text("kept")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, folder / "last.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == sorted(others + ["last.ckpt"])


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
    assert list(ckpts.glob(".last.ckpt.*.tmp"))  # the killed save's temporary file, which the next save removes
    AtomicCheckpointIO().save_checkpoint(checkpoint, ckpts / "last.ckpt")
    assert not list(ckpts.glob(".last.ckpt.*.tmp"))
