"""Reading checkpoints safely: ``weights_only=True`` on every path, local files and http(s) URLs alike.

A checkpoint is a pickle, and unpickling can run any code the file names. Every checkpoint medloc reads
(``--ckpt_path`` of fit/validate/test/predict, ``export``, the warm start, BoxPolicy exports) goes through
:func:`load_checkpoint` or :func:`verify_checkpoint`, which let torch build tensors and plain containers
only, whatever torch's own default. No Lightning here; the Lightning plugin is `medloc_lightning.checkpointing.plugin`.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from medloc_lightning.errors import CheckpointError, MissingFileError

REMOTE_SCHEMES = ("http", "https")


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds more than tensors and plain containers; nothing from it was run."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an http(s) URL (fetched into the torch hub cache before loading)."""
    return urlparse(os.fspath(path)).scheme in REMOTE_SCHEMES


def fetch(path: str | os.PathLike) -> str:
    """A local path for ``path``: URLs are downloaded once into ``<torch hub dir>/checkpoints/`` (as torch does),
    named by a hash of the whole URL and its file name, so ``.../run1/last.ckpt`` and ``.../run2/last.ckpt`` differ."""
    path = os.fspath(path)
    if not is_url(path):
        return path
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = os.path.basename(urlparse(path).path) or "checkpoint.ckpt"
    target = folder / f"{hashlib.sha256(path.encode()).hexdigest()[:16]}-{name}"
    if not target.is_file():
        torch.hub.download_url_to_file(path, str(target), progress=False)
    return str(target)


def _refusal(path: str, err: pickle.UnpicklingError) -> UnsafeCheckpointError:
    text = str(err)
    found = (re.search(r"Unsupported global: (GLOBAL \S+)", text)
             or re.search(r"WeightsUnpickler error:\s*([^\n]+)", text))
    return UnsafeCheckpointError(
        f"refused to load checkpoint {path}: it holds a Python object that only a full unpickle could build "
        f"({found.group(1).strip() if found else 'not a tensor or plain container'}), and unpickling runs code "
        f"named by the file. medloc reads checkpoints with weights_only=True (tensors and plain containers only), "
        f"so nothing from this file was run. Use a checkpoint written by `medloc fit`, or re-save this one from a "
        f"trusted source as plain tensors and containers.")


def _load(local: str, source: str, map_location: Any, mmap: bool) -> Any:
    if not os.path.isfile(local):
        raise MissingFileError(f"checkpoint file not found: {source}")
    try:
        return torch.load(local, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise _refusal(source, err) from None
    except RuntimeError as err:
        if mmap and "mmap" in str(err):  # a legacy (non-zip) file cannot be mapped: read it whole
            return _load(local, source, map_location, mmap=False)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` for a local file or an http(s) URL; an unsafe file raises
    :class:`UnsafeCheckpointError` naming what was refused."""
    return _load(fetch(path), os.fspath(path), map_location, mmap=False)


def verify_checkpoint(path: str | os.PathLike) -> str:
    """Check that ``path`` loads with ``weights_only=True`` (tensors memory-mapped, not read) and return a local
    path to it. A folder (a distributed checkpoint) has its metadata file checked, if any."""
    local = fetch(path)
    if os.path.isdir(local):
        meta = os.path.join(local, "meta.pt")
        if os.path.isfile(meta):
            _load(meta, os.path.join(os.fspath(path), "meta.pt"), "cpu", mmap=True)
        return local
    _load(local, os.fspath(path), "cpu", mmap=True)
    return local
