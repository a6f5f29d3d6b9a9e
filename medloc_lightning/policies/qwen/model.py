"""Helpers on a loaded Qwen2.5-VL model at run time: the base model inside a peft wrapper, and train mode with
every dropout off (how the policy generates and scores)."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


def base_model(model: nn.Module) -> nn.Module:
    """The ``Qwen2_5_VLForConditionalGeneration`` inside a peft wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def dropout_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Every dropout layer, and every attention module with a dropout rate (whatever their current rate)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) or getattr(module, "attention_dropout", 0.0):
            yield module


@contextlib.contextmanager
def train_mode_without_dropout(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in train mode with every dropout off, then restore each module's own mode.

    bitsandbytes repacks 4-bit weights for inference on the first eval-mode forward on CPU, and the next
    training forward then fails; in train mode it never repacks. Dropout (peft's LoRA dropout, attention
    dropout) is switched off module by module, so sampling and scoring see one deterministic policy.
    """
    modes = {module: module.training for module in model.modules()}
    model.train()
    for module in dropout_modules(model):
        module.training = False  # this module only: its children (bnb Linear4bit) stay in train mode
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode

