"""The paper's methods, as the shipped configs define them.

A method is a row of the paper's tables: MedLoc-R1 itself (the paper recipe, `configs/medloc_qwen2_5_vl_3b.yaml`)
or the recipe plus one overlay from `configs/baselines/` or `configs/ablations/`. `load_method` parses the pair
with `medloc`'s own parser, exactly as ``medloc fit --config RECIPE --config OVERLAY`` does, and keeps what makes
the method: the curriculum's schedule, the reward and the module class (GRPO or SFT).

The configs folder ships inside the installed package (``medloc_lightning/configs``, built from the repository's
top-level ``configs/``); in a source checkout the lab reads ``configs/`` itself.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from medloc_lightning.curriculum import ThresholdSchedule
from medloc_lightning.errors import ConfigError, MissingFileError

RECIPE = "medloc_qwen2_5_vl_3b.yaml"
SAME_AS_RECIPE = ("refresh_half", "step_piecewise")
"""Overlays that restate the recipe's own values (reference rows of the ablations): ``medloc`` runs them."""


def _candidates() -> list[Path]:
    package = Path(__file__).resolve().parents[1]
    return [package / "configs", package.parent / "configs"]  # an installed package's, a source checkout's


def configs_folder(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, or the shipped configs (inside the installed package, else the source checkout's
    ``configs/``), checked to hold the recipe."""
    for root in [Path(folder)] if folder is not None else _candidates():
        if (root / RECIPE).is_file():
            return root
    looked = " or ".join(str(root) for root in ([Path(folder)] if folder is not None else _candidates()))
    raise MissingFileError(f"no configs folder with {RECIPE}: looked in {looked}; the lab reads its methods there "
                           "(an installed package ships them: reinstall medloc-lightning from a full source tree)")


CONFIGS = next((root for root in _candidates() if (root / RECIPE).is_file()), _candidates()[0])
"""Where the lab reads its methods (`configs_folder` says why when it does not exist)."""


@dataclass(frozen=True)
class Method:
    """One row of the paper's tables, resolved from the configs: module, reward, and τ schedule (None: SFT)."""

    name: str
    description: str
    """The overlay's first comment line (the recipe's for ``medloc``)."""
    config: str
    """Where it comes from: the recipe, or ``recipe + overlay`` (paths relative to the configs folder)."""
    module: str
    """``"grpo"`` or ``"sft"``."""
    reward: dict[str, Any]
    """`GroundingReward` arguments, as `medloc fit` resolves them (empty for SFT)."""
    schedule: dict[str, Any] | None
    """The curriculum's ``schedule`` block (``class_path``, ``init_args``); None without a curriculum."""

    def build_schedule(self) -> ThresholdSchedule | None:
        """A fresh schedule object, as LightningCLI instantiates it from the block."""
        if self.schedule is None:
            return None
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(ThresholdSchedule, "schedule", fail_untyped=False)
        return parser.instantiate_classes(parser.parse_object({"schedule": self.schedule})).schedule


def method_names(configs: str | os.PathLike | None = None) -> list[str]:
    """``medloc`` and the stem of every baseline and ablation overlay (those in `SAME_AS_RECIPE` excepted)."""
    root = configs_folder(configs)
    stems = [p.stem for sub in ("baselines", "ablations") for p in sorted((root / sub).glob("*.yaml"))]
    return ["medloc", *(s for s in stems if s not in SAME_AS_RECIPE)]


def load_method(name: str, configs: str | os.PathLike | None = None) -> Method:
    """The method ``name`` resolved from the recipe and its overlay (see the module docstring)."""
    return _load_method(name, str(configs_folder(configs)))


@functools.lru_cache(maxsize=None)
def _load_method(name: str, configs: str) -> Method:
    from medloc_lightning.module import SFTGroundingModule

    root = Path(configs)
    files = [root / RECIPE]
    if name != "medloc":
        found = [p for sub in ("baselines", "ablations") if (p := root / sub / f"{name}.yaml").is_file()]
        if not found:
            raise ConfigError(f"unknown method {name!r}; choose from {method_names(root)}")
        files.append(found[0])
    parser = _fit_parser(str(root / RECIPE))
    config = json.loads(parser.dump(parser.parse_args([a for f in files for a in ("--config", str(f))]),
                                    format="json", skip_none=False))
    text = files[-1].read_text(encoding="utf-8")
    description = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), name)
    curriculum = config.get("curriculum")
    module_path, _, class_name = config["model"]["class_path"].rpartition(".")
    module = "sft" if issubclass(getattr(importlib.import_module(module_path), class_name), SFTGroundingModule) \
        else "grpo"
    return Method(name=name, description=description, config=" + ".join(p.relative_to(root).as_posix() for p in files),
                  module=module, reward=dict(config["model"]["init_args"].get("reward") or {}) if module == "grpo" else {},
                  schedule=curriculum["init_args"]["schedule"] if curriculum else None)


@functools.lru_cache(maxsize=1)
def _fit_parser(recipe: str) -> Any:
    """`medloc fit`'s parser (built once: it reads the signatures of every class a config may name)."""
    import lightning.pytorch as pl

    from medloc_lightning.cli import MedlocCLI, Trainer
    from medloc_lightning.module import GroundingModule

    class _ParseOnly(MedlocCLI):
        def instantiate_classes(self) -> None:
            pass

    with _generators_kept(), warnings.catch_warnings():  # LightningCLI seeds every generator while parsing
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # ours are the args
        return _ParseOnly(GroundingModule, pl.LightningDataModule, trainer_class=Trainer, subclass_mode_model=True,
                          subclass_mode_data=True, args=["--config", recipe], run=False,
                          auto_configure_optimizers=False).parser


@contextlib.contextmanager
def _generators_kept() -> Iterator[None]:
    import numpy as np
    import torch

    state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(state)
    np.random.set_state(np_state)
