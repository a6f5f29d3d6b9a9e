"""Module paths that moved still import for one release, with a DeprecationWarning naming the new home."""
from __future__ import annotations

import importlib
import sys

import pytest

from medloc_lightning._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_and_gives_the_new_modules_objects(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        module = importlib.import_module(old)
    new = importlib.import_module(MOVED[old])
    public = [name for name in vars(new) if not name.startswith("_")]
    assert public and all(getattr(module, name) is getattr(new, name) for name in public)


@pytest.mark.parametrize("old,name,new", [
    ("medloc_lightning.rewards", "TRLRewardFunction", "medloc_lightning.integrations.trl"),
    ("medloc_lightning.prior", "json_ready", "medloc_lightning.lab.report"),
    ("medloc_lightning.prior", "build_qwen_grounding_prior", "medloc_lightning.lab.qwen_prior"),
    ("medloc_lightning.policies.base", "gt_boxes", "medloc_lightning.data.records"),
    ("medloc_lightning.policies.base", "record_image", "medloc_lightning.data.records"),
])
def test_a_moved_name_still_imports_from_its_old_module_with_a_warning(old: str, name: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved to {new}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_a_config_naming_the_old_strategy_class_path_still_resolves() -> None:
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    from medloc_lightning.policies.qwen.strategy import QwenFSDPStrategy

    sys.modules.pop("medloc_lightning.strategies", None)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Strategy, "strategy")
    with pytest.warns(DeprecationWarning, match="medloc_lightning.strategies moved"):
        config = parser.parse_object({"strategy": {"class_path": "medloc_lightning.strategies.QwenFSDPStrategy"}})
    assert parser.instantiate_classes(config).strategy.__class__ is QwenFSDPStrategy


def test_the_checked_record_keeps_its_old_name_for_one_release() -> None:
    from medloc_lightning.data import CheckedRecord

    with pytest.warns(DeprecationWarning, match="medloc_lightning.data.Record is now medloc_lightning.data.CheckedRecord"):
        from medloc_lightning.data import Record
    assert Record is CheckedRecord
