"""Checkpoints are read with weights_only=True on every path (no code in a checkpoint ever runs) and written
atomically."""
from __future__ import annotations

import functools
import http.server
import os
import pickle
import threading
import warnings
from pathlib import Path

import pytest
import torch

from medloc_lightning.checkpointing.plugin import AtomicCheckpointIO
from medloc_lightning.checkpointing.loading import UnsafeCheckpointError, load_checkpoint, verify_checkpoint
from medloc_lightning.cli import main

SMOKE = Path(__file__).parents[2] / "configs" / "tiny_smoke.yaml"


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def write_malicious(path: Path, marker: Path, zipped: bool = True) -> Path:
    checkpoint = {"state_dict": {"w": torch.ones(2)}, "epoch": 0, "payload": Payload(marker)}
    if zipped:
        torch.save(checkpoint, path)
    else:
        path.write_bytes(pickle.dumps(checkpoint))
    return path


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields its base URL."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # the download cache of this test only
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("zipped", [True, False], ids=["torch.save", "raw-pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on the raw pickle's protocol
def test_load_and_verify_refuse_a_malicious_checkpoint(tmp_path, zipped):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / "evil.ckpt", marker, zipped)
    for read in (load_checkpoint, verify_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=r"refused to load checkpoint .*evil.ckpt.*weights_only=True"):
            read(path)
    assert not marker.exists()


def test_plain_checkpoints_load_and_save_atomically(tmp_path):
    io = AtomicCheckpointIO()
    state = {"state_dict": {"w": torch.arange(3.0)}, "loops": {"step": 3}, "events": [{"tau": 0.45}]}
    io.save_checkpoint(state, tmp_path / "sub" / "a.ckpt")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.ckpt"]  # no temporary file left behind
    loaded = io.load_checkpoint(tmp_path / "sub" / "a.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"]) and loaded["events"] == state["events"]
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True only"):
        io.load_checkpoint(tmp_path / "sub" / "a.ckpt", weights_only=False)


def test_downloads_with_the_same_file_name_from_different_urls_are_kept_apart(server):
    url, root = server
    for run, value in (("run1", 1.0), ("run2", 2.0)):
        (root / run).mkdir()
        torch.save({"state_dict": {"w": torch.full((2,), value)}}, root / run / "last.ckpt")
    first = load_checkpoint(f"{url}/run1/last.ckpt")
    second = load_checkpoint(f"{url}/run2/last.ckpt")
    assert first["state_dict"]["w"].tolist() == [1.0, 1.0] and second["state_dict"]["w"].tolist() == [2.0, 2.0]
    assert verify_checkpoint(f"{url}/run1/last.ckpt") != verify_checkpoint(f"{url}/run2/last.ckpt")
    assert all(Path(verify_checkpoint(f"{url}/{run}/last.ckpt")).name.endswith("-last.ckpt") for run in ("run1", "run2"))


def _run(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(list(args))


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict", "export"])
def test_medloc_refuses_a_malicious_checkpoint_served_over_http(command, server, tmp_path, monkeypatch, capsys):
    url, root = server
    marker = tmp_path / "marker"
    write_malicious(root / "evil.ckpt", marker)
    monkeypatch.chdir(tmp_path)
    extra = ["--out_dir", str(tmp_path / "exported")] if command == "export" else []
    with pytest.raises(SystemExit) as exit_info:
        _run(command, "--config", str(SMOKE), "--data.init_args.n", "20", "--ckpt_path", f"{url}/evil.ckpt", *extra)
    assert not marker.exists(), "code from the checkpoint ran"
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"medloc: error: refused to load checkpoint {url}/evil.ckpt" in err
    assert "(GLOBAL exec)" in err  # what was refused


def test_medloc_fit_refuses_a_malicious_local_checkpoint(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / "evil.ckpt", marker)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        _run("fit", "--config", str(SMOKE), "--data.init_args.n", "20", "--ckpt_path", str(path))
    assert not marker.exists()
    assert f"medloc: error: refused to load checkpoint {path}" in capsys.readouterr().err


def test_box_policy_export_refuses_a_malicious_weights_file(tmp_path):
    from medloc_lightning.policies.box.policy import WEIGHTS_FILE, BoxPolicy

    BoxPolicy(image_size=32).export(str(tmp_path / "box"))
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "box" / WEIGHTS_FILE, marker)
    with pytest.raises(UnsafeCheckpointError, match=r"\(GLOBAL exec\)"):
        BoxPolicy.from_export(str(tmp_path / "box"))
    assert not marker.exists()
