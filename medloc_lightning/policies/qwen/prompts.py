"""Qwen2.5-VL prompts for grounding records: chat text, processor outputs, context-length rejection.

VLM-R1's layout: one user turn holding the image then the templated query, no system prompt of our own
(the chat template adds its default one), the generation prompt appended. Prompts too long for the
context are rejected up front and never truncated: truncation would cut image tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from medloc_lightning.boxes import ImageGeometry
from medloc_lightning.parsing import build_prompt
from medloc_lightning.data.records import Record, record_image
from medloc_lightning.policies.qwen.batch import PROMPT_KEYS


@dataclass
class EncodedPrompts:
    """Processor outputs of the kept records, and why the others were rejected."""

    prompts: dict[str, Tensor] | None
    """Left-padded processor outputs (``PROMPT_KEYS``) of the kept records; None when none is kept."""
    kept: list[int]
    rejected: dict[int, str]
    geometries: list[ImageGeometry]
    """Original <-> model pixels of each kept record, from the processor's ``image_grid_thw``."""
    lengths: list[int]
    """Prompt tokens (image tokens included, padding excluded) of each kept record."""


def prompt_text(processor: Any, record: Record, template: str) -> str:
    """The chat-templated prompt of one record."""
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": build_prompt(record["query"], template)}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def process(processor: Any, records: Sequence[Record], template: str, device: torch.device) -> dict[str, Tensor]:
    """Left-padded processor outputs for ``records``, on ``device``."""
    out = processor(images=[record_image(r) for r in records],
                    text=[prompt_text(processor, r, template) for r in records],
                    return_tensors="pt", padding=True, padding_side="left")
    return {key: out[key].to(device) for key in PROMPT_KEYS}


def rejection_reason(record: Record, index: int, prompt_tokens: int, extra_tokens: int, context: int) -> str:
    return (f"record {record.get('id', index)!r}: prompt of {prompt_tokens} tokens + {extra_tokens} completion "
            f"tokens = {prompt_tokens + extra_tokens} exceeds the model context of {context} "
            "(text_config.max_position_embeddings); rejected, since truncating would cut image tokens")


def encode_prompts(processor: Any, batch: Sequence[Record], *, template: str, context_length: int,
                   device: torch.device, extra_tokens: Sequence[int] | int = 0) -> EncodedPrompts:
    """Process ``batch``, rejecting records whose prompt + ``extra_tokens`` exceed ``context_length``.

    When some are rejected the kept ones are processed again alone, so no padding or pixels of a rejected
    record remain in the outputs.
    """
    extras = [extra_tokens] * len(batch) if isinstance(extra_tokens, int) else list(extra_tokens)
    if len(extras) != len(batch):
        raise ValueError(f"extra_tokens has {len(extras)} entries for {len(batch)} records")
    if not batch:
        return EncodedPrompts(None, [], {}, [], [])
    prompts = process(processor, batch, template, device)
    lengths = prompts["attention_mask"].sum(1).tolist()
    rejected = {i: rejection_reason(batch[i], i, n, extra, context_length)
                for i, (n, extra) in enumerate(zip(lengths, extras)) if n + extra > context_length}
    kept = [i for i in range(len(batch)) if i not in rejected]
    if not kept:
        return EncodedPrompts(None, [], rejected, [], [])
    if rejected:
        prompts = process(processor, [batch[i] for i in kept], template, device)
    patch = int(processor.image_processor.patch_size)
    geometries = [ImageGeometry.from_grid_thw(int(batch[i]["width"]), int(batch[i]["height"]),
                                              prompts["image_grid_thw"][j], patch_size=patch)
                  for j, i in enumerate(kept)]
    return EncodedPrompts(prompts, kept, rejected, geometries, [lengths[i] for i in kept])
