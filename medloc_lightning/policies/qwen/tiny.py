"""A tiny random-weight Qwen2.5-VL, built fully offline, for tests and the smoke config.

The folder has the real architecture (vision tower with window attention, mrope text model), a byte-level
BPE tokenizer trained here that carries Qwen's special tokens and covers the prompt and answer formats, a
Qwen-style chat template and an image-only processor. It loads with the stock
``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and with `ImageOnlyQwen2_5_VLProcessor`.

Run ``python -m medloc_lightning.policies.qwen.tiny OUT_DIR`` to write one, or pass the name `TINY_QWEN_NAME` as
``model_name_or_path`` to `QwenVLPolicy` (the smoke config does) to build one on the fly.
"""
from __future__ import annotations

import argparse
import atexit
import hashlib
import inspect
import json
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from medloc_lightning.errors import ConfigError

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
"""Qwen2.5-VL's special tokens, in the real vocabulary's order (here they take ids 0-13, before the merges)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL-style chat template: a default system turn, images as vision placeholders."""

_QUERIES = (
    "lesion", "skin lesion", "pigmented lesion", "melanocytic nevus", "thyroid nodule", "hypoechoic nodule",
    "calcaneus", "heel bone", "fracture", "tumor", "mass", "polyp", "the object", "the bright region",
)
_THINKS = (
    "The lesion is the dark region near the center of the image.",
    "I look for the nodule and its boundary in the ultrasound image.",
    "The heel bone is visible in the lower part of the X-ray.",
)

TINY_QWEN_NAME = "medloc:tiny-qwen2.5-vl"
"""A ``model_name_or_path`` that `QwenVLPolicy` resolves to `tiny_qwen_path()` (no hub repo can be named so)."""
CACHE_ENV = "MEDLOC_TINY_QWEN_CACHE"
"""Environment variable naming a persistent cache folder for `tiny_qwen_path` (default: a per-process temp)."""

_TOKENIZER_VOCAB = 1024
_BUILT: dict[tuple[str, str], Path] = {}
_PROCESS_ROOT: list[Path] = []
_CACHE_LOCK = threading.Lock()


def tokenizer_corpus() -> list[str]:
    """Deterministic training text: chat scaffolding, the prompt template, answers and numbers."""
    from medloc_lightning.parsing import DEFAULT_PROMPT_TEMPLATE, build_prompt, format_answer

    rng = random.Random(0)
    texts = ["system\nYou are a helpful assistant.", "user\n", "assistant\n",
             DEFAULT_PROMPT_TEMPLATE.replace("{query}", ""), " ".join(str(i) for i in range(1000))]
    for query in _QUERIES:
        texts.append(build_prompt(query, DEFAULT_PROMPT_TEMPLATE))
    for i in range(400):
        x1, y1 = rng.randrange(0, 400), rng.randrange(0, 400)
        box = (x1, y1, x1 + rng.randrange(1, 300), y1 + rng.randrange(1, 300))
        texts.append(format_answer(box, label=rng.choice(_QUERIES),
                                   think=_THINKS[i % len(_THINKS)] if i % 2 else None))
    return texts * 4


def build_tokenizer(vocab_size: int = _TOKENIZER_VOCAB):
    """A byte-level BPE tokenizer (digits split singly, as Qwen does) with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(QWEN_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        padding_side="left", additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=131072, chat_template=CHAT_TEMPLATE)


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    for name in ("hidden", "vision_hidden"):
        if dims[name] % 64:
            # bitsandbytes' CPU 4-bit inference layout fails for Linear in_features below its 64 block.
            raise ConfigError(f"{name} must be a multiple of 64 (bitsandbytes 4-bit on CPU), got {dims[name]}")
    if dims["hidden"] % dims["heads"] or dims["heads"] % dims["kv_heads"]:
        raise ConfigError(f"hidden ({dims['hidden']}) must divide by heads ({dims['heads']}), "
                         f"and heads by kv_heads ({dims['kv_heads']})")
    if (dims["hidden"] // dims["heads"]) % 4:
        raise ConfigError(f"head dim hidden/heads = {dims['hidden'] // dims['heads']} must be a multiple of 4")
    if dims["vision_hidden"] % dims["vision_heads"]:
        raise ConfigError(f"vision_hidden ({dims['vision_hidden']}) must divide by vision_heads")


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary pairs over (t, h, w) like Qwen's [16, 24, 24] for head_dim 128."""
    half = head_dim // 2
    hw = half * 3 // 8
    return [half - 2 * hw, hw, hw]


def build_tiny_qwen2_5_vl(
    out_dir: str | os.PathLike,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 64,
    vision_depth: int = 2,
    vision_heads: int = 2,
    seed: int = 0,
    min_pixels: int = 56 * 56,
    max_pixels: int = 224 * 224,
    max_position_embeddings: int = 2048,
) -> Path:
    """Write a random-weight Qwen2.5-VL (HF format) with tokenizer, chat template and processor; offline."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from medloc_lightning.policies.qwen.processor import ImageOnlyQwen2_5_VLProcessor

    _check_dims(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vision_hidden=vision_hidden,
                vision_depth=vision_depth, vision_heads=vision_heads,
                max_position_embeddings=max_position_embeddings)
    if min_pixels > max_pixels:
        raise ConfigError(f"min_pixels ({min_pixels}) exceeds max_pixels ({max_pixels})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                             "mrope_section": _mrope_section(hidden // heads)},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
            num_heads=vision_heads, out_hidden_size=hidden, fullatt_block_indexes=[vision_depth - 1],
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    # Like the real Instruct checkpoints: both end-of-turn and end-of-text stop generation.
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"])
    improc = Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor=improc, tokenizer=tok, chat_template=CHAT_TEMPLATE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _cache_key(kwargs: dict) -> str:
    import transformers

    corpus = hashlib.sha256("\n".join(tokenizer_corpus()).encode()).hexdigest()
    blob = json.dumps({"kwargs": kwargs, "transformers": transformers.__version__, "corpus": corpus,
                       "format": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tiny_qwen_path(cache_dir: str | os.PathLike | None = None, **kwargs) -> Path:
    """Path of a tiny model built with ``kwargs``, built at most once per process and cache folder.

    With ``cache_dir`` None the model goes to ``$MEDLOC_TINY_QWEN_CACHE`` when set, else to a per-process
    temporary folder removed at exit. Builds go to a scratch folder renamed into place, so concurrent
    processes sharing a ``cache_dir`` never see a half-written model.
    """
    key = _cache_key(kwargs)
    with _CACHE_LOCK:
        if cache_dir is None and os.environ.get(CACHE_ENV):
            cache_dir = os.environ[CACHE_ENV]
        if cache_dir is None:
            if not _PROCESS_ROOT:
                _PROCESS_ROOT.append(Path(tempfile.mkdtemp(prefix="medloc-tiny-qwen-")))
                atexit.register(shutil.rmtree, _PROCESS_ROOT[0], True)
            root = _PROCESS_ROOT[0]
        else:
            root = Path(cache_dir)
        cached = _BUILT.get((str(root), key))
        if cached is not None and (cached / "config.json").is_file():
            return cached
        target = root / f"tiny-qwen2_5-vl-{key}"
        if not (target / "model.safetensors").is_file():
            root.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
            build_tiny_qwen2_5_vl(scratch, **kwargs)
            try:
                scratch.rename(target)
            except OSError:  # another process won the race; its copy is identical
                shutil.rmtree(scratch, ignore_errors=True)
        _BUILT[(str(root), key)] = target
        return target


def add_dimension_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """The builder's architecture and processor options (shared with the grounding-prior recipe), except those
    named in ``skip``."""
    defaults = {k: p.default for k, p in inspect.signature(build_tiny_qwen2_5_vl).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    helps = {"hidden": "text hidden size (multiple of 64)", "layers": "decoder layers",
             "heads": "attention heads", "kv_heads": "key/value heads",
             "vision_hidden": "vision hidden size (multiple of 64)", "vision_depth": "vision blocks",
             "vision_heads": "vision attention heads", "seed": "weight-initialisation seed",
             "min_pixels": "processor min_pixels", "max_pixels": "processor max_pixels",
             "max_position_embeddings": "text context length"}
    for name, help_text in helps.items():
        if name in skip:
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=defaults[name],
                            help=f"{help_text} (default {defaults[name]})")


def dimensions_from_args(args: argparse.Namespace) -> dict[str, int]:
    """The keyword arguments of `build_tiny_qwen2_5_vl` named by the options `add_dimension_arguments` added."""
    return {name: getattr(args, name) for name in ("hidden", "layers", "heads", "kv_heads", "vision_hidden",
                                                   "vision_depth", "vision_heads", "seed", "min_pixels",
                                                   "max_pixels", "max_position_embeddings") if hasattr(args, name)}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m medloc_lightning.policies.qwen.tiny OUT_DIR [--hidden N --layers N ...]``: write a tiny
    random-weight model folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    add_dimension_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        path = build_tiny_qwen2_5_vl(args.out_dir, **dimensions_from_args(args))
    except ValueError as err:
        parser.error(str(err))
    print(path)


if __name__ == "__main__":
    main()
