"""Random-weight Qwen2.5-VL folders for the GPU benchmark, built offline: the public 3B architecture.

The tokenizer is the tiny model's byte-level BPE with its vocabulary padded to the 3B's 151 936 rows, so
every id the model can sample decodes (to filler text; random weights make text meaningless anyway) and
every id the tokenizer emits indexes the embedding. The special-token ids in the config are the tiny
tokenizer's (0-13), not Qwen's 151643+; the architecture is otherwise the published one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QWEN2_5_VL_3B_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
    use_sliding_window=False, sliding_window=32768, max_window_layers=70, attention_dropout=0.0,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    tie_word_embeddings=True)
"""Text config of Qwen/Qwen2.5-VL-3B-Instruct (config.json), in transformers v5 form."""

QWEN2_5_VL_3B_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=2048,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
"""Vision config of Qwen/Qwen2.5-VL-3B-Instruct."""

SMOKE_OVERRIDES = (
    dict(hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
    dict(depth=1, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256, fullatt_block_indexes=[0]),
)
"""A one-layer, narrow version (head dim 128 and vocab 151 936 kept) to smoke-test the path on a CPU."""


def padded_tokenizer(vocab_size: int) -> Any:
    """The tiny model's tokenizer with filler tokens appended so that ids ``0 .. vocab_size-1`` all decode.

    Fillers are ``"zz<id>"``: the pre-tokenizer splits digits one by one, so no merge can ever produce
    them and encoding is unchanged.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from medloc_lightning.policies.qwen.tiny import QWEN_SPECIAL_TOKENS, build_tokenizer

    base = build_tokenizer()
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    taken = set(vocab) | {t["content"] for t in spec.get("added_tokens", [])}
    size = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    if size > vocab_size:
        raise ValueError(f"tokenizer already has {size} ids, more than the {vocab_size} embedding rows")
    for i in range(size, vocab_size):
        token = f"zz{i}"
        if token in taken:
            raise ValueError(f"filler token {token!r} collides with the vocabulary")
        vocab[token] = i
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, padding_side="left", additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=131072, chat_template=base.chat_template)
    if len(tok) != vocab_size:
        raise ValueError(f"padded tokenizer has {len(tok)} ids, expected {vocab_size}")
    return tok


def build_qwen2_5_vl_3b(out_dir: str | Path, *, device: str = "cpu", dtype: str = "bfloat16",
                        smoke: bool = False, max_pixels: int = 224 * 224, seed: int = 0) -> Path:
    """Write a random-init Qwen2.5-VL-3B-architecture folder (weights in ``dtype``) with a processor."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from medloc_lightning.policies.qwen.processor import ImageOnlyQwen2_5_VLProcessor
    from medloc_lightning.policies.qwen.tiny import CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS

    text, vision = dict(QWEN2_5_VL_3B_TEXT), dict(QWEN2_5_VL_3B_VISION)
    if smoke:
        text.update(SMOKE_OVERRIDES[0])
        vision.update(SMOKE_OVERRIDES[1])
    tok = padded_tokenizer(text["vocab_size"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text.update(bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch_dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    del model
    improc = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": max_pixels})
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor=improc, tokenizer=tok, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    return out


def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in a folder's safetensors files (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                shape = fh.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= int(dim)
                total += count
    return total
