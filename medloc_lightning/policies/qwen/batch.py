"""Tensor plumbing for Qwen2.5-VL rollouts: completion masks, per-image pixel slicing, token log-probs.

Pure torch functions. Qwen's processor flattens every image's patches into one ``pixel_values`` matrix
(``t*h*w`` rows per image, in ``image_grid_thw`` order), so selecting prompts means slicing those rows.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

PROMPT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
"""The processor outputs a prompt needs, per prompt (never expanded G times)."""


def completion_mask(ids: Tensor, eos_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """[N, T] float mask up to and including the first EOS, and [N] bool "an EOS was produced"."""
    is_eos = torch.isin(ids, torch.as_tensor(list(eos_ids), dtype=ids.dtype, device=ids.device))
    has_eos = is_eos.any(-1)
    length = ids.shape[-1]
    first = torch.where(has_eos, is_eos.int().argmax(-1), torch.full_like(has_eos, length, dtype=torch.long))
    positions = torch.arange(length, device=ids.device)
    return (positions[None] <= first[:, None]).float(), has_eos


def image_offsets(grid_thw: Tensor) -> list[int]:
    """Start row of each image in the flat ``pixel_values`` (plus the end), from ``image_grid_thw``."""
    sizes = grid_thw.prod(-1).tolist()
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + int(size))
    return offsets


def select_images(pixel_values: Tensor, grid_thw: Tensor, index: Sequence[int]) -> Tensor:
    """The patch rows of images ``index`` (repeats allowed), concatenated in that order."""
    offsets = image_offsets(grid_thw)
    if offsets[-1] != pixel_values.shape[0]:
        raise ValueError(f"image_grid_thw covers {offsets[-1]} patch rows but pixel_values has "
                         f"{pixel_values.shape[0]}")
    return torch.cat([pixel_values[offsets[i]:offsets[i + 1]] for i in index])


def select_prompts(prompts: Mapping[str, Tensor], index: Sequence[int] | Tensor, pixels: bool = True
                   ) -> dict[str, Tensor]:
    """Rows ``index`` (repeats allowed) of per-prompt processor outputs with one image per prompt; without
    ``pixels`` the image patches are left out (for callers that pass precomputed vision features)."""
    index_list = index.tolist() if isinstance(index, Tensor) else list(index)
    rows = torch.as_tensor(index_list, dtype=torch.long, device=prompts["input_ids"].device)
    out = {k: prompts[k][rows] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    grid = prompts["image_grid_thw"]
    out["image_grid_thw"] = grid[rows.to(grid.device)]
    if pixels:
        out["pixel_values"] = select_images(prompts["pixel_values"], grid, index_list)
    return out


def shared_image_features(model: Any, prompts: Mapping[str, Tensor], index: Sequence[int]) -> Any:
    """Vision features for rows ``index``, computed once per distinct prompt image and shared by its rows,
    in the form Qwen2.5-VL's forward takes as ``mm_encoder_outputs["image"]``."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    distinct = sorted(set(index))
    grid = prompts["image_grid_thw"]
    pixels = select_images(prompts["pixel_values"], grid, distinct)
    features = model.get_image_features(pixels, grid[torch.as_tensor(distinct, device=grid.device)],
                                        return_dict=True).pooler_output
    by_prompt = dict(zip(distinct, features))
    return BaseModelOutputWithPooling(pooler_output=tuple(by_prompt[i] for i in index))


def append_completions(prompts: Mapping[str, Tensor], completion_ids: Tensor, completion_mask: Tensor
                       ) -> dict[str, Tensor]:
    """Teacher-forcing inputs: prompt + completion ids, masks, and ``mm_token_type_ids`` zero-extended.

    The zero extension marks completion tokens as text; without it Qwen2.5-VL falls back to 1-D positions
    and the log-probs silently disagree with the ones generation used.
    """
    mm = prompts["mm_token_type_ids"]
    return {
        "input_ids": torch.cat([prompts["input_ids"], completion_ids.to(prompts["input_ids"].dtype)], 1),
        "attention_mask": torch.cat([prompts["attention_mask"],
                                     completion_mask.to(prompts["attention_mask"].dtype)], 1),
        "mm_token_type_ids": torch.cat([mm, torch.zeros_like(completion_ids, dtype=mm.dtype)], 1),
        "image_grid_thw": prompts["image_grid_thw"],
        **({"pixel_values": prompts["pixel_values"]} if "pixel_values" in prompts else {}),
    }


def token_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at ``ids``, computed in float32 one row at a time.

    ``logits`` is [n, T, V] (the positions predicting ``ids`` [n, T]); the row loop bounds the float32 copy
    to one [T, V] slab, which matters for Qwen's 152k vocabulary.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows = []
    for row_logits, row_ids in zip(logits, ids):
        scaled = row_logits.float() / temperature
        picked = scaled.gather(-1, row_ids[:, None]).squeeze(-1)
        rows.append(picked - torch.logsumexp(scaled, -1))
    if not rows:
        return logits.new_zeros(ids.shape, dtype=torch.float32)
    return torch.stack(rows)
