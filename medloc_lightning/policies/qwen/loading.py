"""Loading a Qwen2.5-VL for training: dtype, bitsandbytes quantization, LoRA, frozen vision, checkpointing.

Pure set-up functions used by `QwenVLPolicy.configure`; they take plain arguments and return the model, so
each piece can be read and tested alone.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence, get_args

import torch
from torch import nn

from medloc_lightning.errors import CheckpointError, ConfigError, MissingFileError

if TYPE_CHECKING:
    from peft import LoraConfig

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
DTypeName = Literal["auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32"]
"""``"auto"`` keeps the checkpoint's dtype; the others name a torch dtype (short and long spellings)."""
Quantization = Literal["4bit", "8bit"]
QUANTIZATION_MODES: tuple[str, ...] = get_args(Quantization)
VISION_MODULE_PATTERN = r".*\bvisual\b.*"
"""peft ``exclude_modules`` regex for the vision tower (module names like ``model.visual.blocks.0.mlp``)."""


def resolve_model_name(name: str) -> str:
    """A ``medloc:`` name -> the folder it stands for; any other name (hub id, local folder) unchanged.

    ``medloc:tiny-qwen2.5-vl`` is a random-weight tiny model built offline (cached per process); the names in
    `medloc_lightning.pretrained.SHIPPED` are folders shipped with the package.
    """
    from medloc_lightning.pretrained import SHIPPED, shipped_path
    from medloc_lightning.policies.qwen.tiny import TINY_QWEN_NAME, tiny_qwen_path

    if not name.startswith("medloc:"):
        return name
    if name == TINY_QWEN_NAME:
        return str(tiny_qwen_path())
    if name in SHIPPED:
        path = shipped_path(name)
        if not (path / "config.json").is_file():
            raise MissingFileError(f"{name}: the shipped folder {path} is missing or incomplete; reinstall the "
                                    f"package, or rebuild it with `python -m medloc_lightning.prior --out {path}`")
        return str(path)
    raise ConfigError(f"unknown model name {name!r}; the medloc: names are {sorted([TINY_QWEN_NAME, *SHIPPED])}")


def wrap_classes() -> tuple[type[nn.Module], ...]:
    """The blocks FSDP auto-wraps (and activation checkpointing targets): decoder layers and vision blocks."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock

    return (Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock)


def resolve_dtype(dtype: DTypeName) -> torch.dtype | str:
    """``"auto"`` (the checkpoint's dtype) or a torch dtype from its name."""
    if dtype == "auto":
        return "auto"
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}") from None


def check_quantization(mode: str | None) -> None:
    """Fail early, before any weights load, on a quantization mode we do not know."""
    if mode is not None and mode not in QUANTIZATION_MODES:
        raise ConfigError(f"quantization must be None, '4bit' or '8bit', got {mode!r}")


def quantization_config(mode: Quantization | None, compute_dtype: torch.dtype | str) -> Any:
    """A ``BitsAndBytesConfig`` for ``"4bit"`` (nf4, double quant) or ``"8bit"``; None when ``mode`` is None."""
    check_quantization(mode)
    if mode is None:
        return None
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
    if compute_dtype == "auto":
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=["lm_head"])


def quantized_device_map() -> dict[str, Any]:
    """bitsandbytes quantizes while loading, so the weights must land on their final device right away."""
    if torch.cuda.is_available():
        return {"": torch.cuda.current_device()}
    return {"": "cpu"}


def adapter_base(path: str) -> str | None:
    """The base model a local peft adapter folder was trained from, or None when ``path`` is no adapter."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text())["base_model_name_or_path"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{config}: field 'base_model_name_or_path' missing or unreadable ({err})") from err
    if not base:
        raise CheckpointError(f"{config}: field 'base_model_name_or_path' is empty")
    return base


def load_base_model(path: str, *, dtype: DTypeName = "auto", attn_implementation: str | None = None,
                    quantization: Quantization | None = None, trust_remote_code: bool = False,
                    local_files_only: bool = False) -> nn.Module:
    """``Qwen2_5_VLForConditionalGeneration.from_pretrained`` with our knobs, in train mode."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch_dtype = resolve_dtype(dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code,
                              "local_files_only": local_files_only}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    qconfig = quantization_config(quantization, torch_dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = quantized_device_map()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs)
    model.train()
    return model


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision encoder (``visual``) of a Qwen2.5-VL model, peft-wrapped or not."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "visual":
            return module
    raise ValueError(f"{type(model).__name__} has no 'visual' submodule: not a Qwen2.5-VL model?")


def lora_config(config: LoraConfig | None, *, r: int, alpha: int, dropout: float, target_modules: Sequence[str],
                freeze_vision: bool) -> LoraConfig | None:
    """The adapter to train: ``config`` as given, or one built from the short fields when ``r > 0``; None for a
    full fine-tune. With ``freeze_vision`` the vision tower is excluded, so no adapter lands in it."""
    if config is not None and r > 0:
        raise ConfigError(f"set either lora (a peft.LoraConfig) or lora_r > 0, not both (lora_r={r})")
    if config is None and r == 0:
        return None
    if config is None:
        from peft import LoraConfig

        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                            bias="none")
    if not freeze_vision:
        return config
    if config.exclude_modules:
        raise ConfigError(f"lora.exclude_modules is set ({config.exclude_modules!r}) and freeze_vision=True: set "
                         f"freeze_vision=False and exclude the vision tower yourself (regex {VISION_MODULE_PATTERN!r})")
    return dataclasses.replace(config, exclude_modules=VISION_MODULE_PATTERN)


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap ``model`` in a trainable peft LoRA model."""
    from peft import get_peft_model

    with _quiet_peft():
        return get_peft_model(model, config)


def load_adapter(model: nn.Module, adapter_path: str, *, local_files_only: bool = False) -> nn.Module:
    """Wrap ``model`` with a trained (and trainable) peft adapter from ``adapter_path``."""
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=True, local_files_only=local_files_only)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft still reads transformers' deprecated ``is_gradient_checkpointing``; that notice is not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def enable_gradient_checkpointing(model: nn.Module, *, with_adapter: bool) -> None:
    """Non-reentrant activation checkpointing; adapters also need grads on the (frozen) input embeddings."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if with_adapter:
        model.enable_input_require_grads()
