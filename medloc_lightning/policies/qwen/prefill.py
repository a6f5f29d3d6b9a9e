"""Prefill each prompt once and share its KV cache among the rows that continue it (generation and scoring).

``generate(num_return_sequences=G)`` repeats every prompt G times before the prefill, so the text prefill runs
B·G times; a teacher-forced scoring pass likewise runs the prompt once per completion. Here the B distinct
prompts are prefilled once, their cache is repeated (or gathered) for the rows that continue them, and only
the new tokens run per row. Positions follow Qwen2.5-VL's own rule for text after the last image: the row's
text index plus the prompt's mrope delta (``get_rope_index``), which transformers reuses when generation
continues from a cache. Per row the computation is the plain path's, so log-probs agree to float rounding
and same-seed samples coincide (tests/policies/test_qwen_prefill.py).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from medloc_lightning.policies.qwen.batch import select_images, token_logprobs
from medloc_lightning.policies.qwen.model import base_model, dropout_modules


def rope_index(model: nn.Module, prompts: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """mrope positions [3, B, L] of left-padded prompts and each prompt's delta [B, 1] (the offset of text
    positions after the image from the plain text index)."""
    return base_model(model).model.get_rope_index(
        prompts["input_ids"], mm_token_type_ids=prompts["mm_token_type_ids"],
        image_grid_thw=prompts["image_grid_thw"], attention_mask=prompts["attention_mask"])


def text_positions(attention_mask: Tensor, deltas: Tensor, start: int) -> Tensor:
    """mrope positions [3, n, L - start] of the text tokens from column ``start`` on: the count of attended
    tokens before each one plus the row's delta (padding gets a harmless placeholder)."""
    index = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
    return (index + deltas.to(index.device)).unsqueeze(0).expand(3, -1, -1)


def prefill(model: nn.Module, prompts: Mapping[str, Tensor], index: Sequence[int], *, drop_last: bool = False
            ) -> tuple[Any, Tensor, Tensor]:
    """Run prompts ``index`` (distinct, in this order) once: their cache, mrope deltas [k, 1] and the logits
    [k, 1, V] after the last prompt token. ``drop_last`` leaves each prompt's last token out of the cache (it
    is the same text token in every left-padded row, so a decoding step can take it)."""
    rows = torch.as_tensor(list(index), dtype=torch.long, device=prompts["input_ids"].device)
    grid = prompts["image_grid_thw"]
    part = {k: prompts[k][rows] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    part["image_grid_thw"] = grid[rows.to(grid.device)]
    positions, deltas = rope_index(model, part)
    end = part["input_ids"].shape[1] - int(drop_last)
    out = model(input_ids=part["input_ids"][:, :end], attention_mask=part["attention_mask"][:, :end],
                position_ids=positions[..., :end], image_grid_thw=part["image_grid_thw"],
                pixel_values=select_images(prompts["pixel_values"], grid, list(index)),
                use_cache=True, logits_to_keep=1)
    return out.cache, deltas, out.logits


def generate_with_shared_prefill(model: nn.Module, prompts: Mapping[str, Tensor], config: Any,
                                 synced_gpus: bool | None = None) -> Tensor:
    """``model.generate(**prompts, generation_config=config)`` with the prompts prefilled once: the cache of
    all but each prompt's last token is repeated ``config.num_return_sequences`` times, then ``generate``
    continues from it on the repeated prompt ids (one sample per row). Returns the sequences [B·G, L + T]."""
    import copy

    group = int(config.num_return_sequences or 1)
    cache, deltas, _ = prefill(model, prompts, range(prompts["input_ids"].shape[0]), drop_last=True)
    cache.batch_repeat_interleave(group)
    # transformers continues mrope positions from the deltas stored on the model by the last prefill.
    base_model(model).model.rope_deltas = deltas.repeat_interleave(group, 0)
    single = copy.copy(config)
    single.num_return_sequences = 1
    repeated = {k: prompts[k].repeat_interleave(group, 0) for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    return model.generate(**repeated, cache=cache, generation_config=single, synced_gpus=synced_gpus)


def score_with_shared_prefill(model: nn.Module, prompts: Mapping[str, Tensor], prompt_index: Sequence[int],
                              completion_ids: Tensor, completion_mask: Tensor, temperature: float) -> Tensor:
    """Teacher-forced log-probs [n, T] of ``completion_ids`` after prompts ``prompt_index`` (repeats allowed),
    with each distinct prompt run once and its cache gathered for its rows."""
    distinct = sorted(set(prompt_index))
    slot = {p: i for i, p in enumerate(distinct)}
    gather = torch.tensor([slot[p] for p in prompt_index], dtype=torch.long, device=prompts["input_ids"].device)
    cache, deltas, first = prefill(model, prompts, distinct)
    logits = first[gather]
    length = completion_ids.shape[1]
    if length > 1:
        cache.batch_select_indices(gather)
        rows = torch.as_tensor(list(prompt_index), dtype=torch.long, device=prompts["input_ids"].device)
        prompt_mask = prompts["attention_mask"][rows]
        mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], 1)[:, :-1]
        inputs = completion_ids[:, :-1].to(prompts["input_ids"].dtype)
        positions = text_positions(mask, deltas[gather], prompt_mask.shape[1])
        rest = model(input_ids=inputs, attention_mask=mask, position_ids=positions, cache=cache,
                     use_cache=True).logits
        logits = torch.cat([logits, rest], 1)
    return token_logprobs(logits, completion_ids, temperature)


def caches_through_backward(model: nn.Module) -> bool:
    """Whether a gradient pass may reuse a shared prompt cache: no activation checkpointing (transformers
    drops the cache in checkpointed layers) and no active dropout (the plain path draws a dropout mask per
    row; a shared prompt would share one)."""
    if any(getattr(module, "gradient_checkpointing", False) for module in model.modules()):
        return False
    return not any(module.training and getattr(module, "p", 1.0) > 0 for module in dropout_modules(model))
