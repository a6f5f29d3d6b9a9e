"""Pure tensor helpers of the Qwen policy: EOS masks, per-image pixel slicing, token log-probs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.policies.qwen.batch import (
    append_completions,
    completion_mask,
    select_images,
    select_prompts,
    token_logprobs,
)

EOS = (7, 9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10), min_size=1, max_size=12), min_size=1, max_size=6)
       .filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_completion_mask_keeps_up_to_and_including_first_eos(rows: list[list[int]]) -> None:
    mask, has_eos = completion_mask(torch.tensor(rows), EOS)
    for row, row_mask, ended in zip(rows, mask.tolist(), has_eos.tolist()):
        stops = [t for t, token in enumerate(row) if token in EOS]
        expected_len = stops[0] + 1 if stops else len(row)
        assert row_mask == [1.0] * expected_len + [0.0] * (len(row) - expected_len)
        assert ended == bool(stops)


def test_completion_mask_hand_cases() -> None:
    ids = torch.tensor([[7, 1, 2], [1, 9, 7], [1, 2, 3]])
    mask, has_eos = completion_mask(ids, EOS)
    assert mask.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert has_eos.tolist() == [True, True, False]
    assert mask.dtype == torch.float32


def _pixels(grids: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat patch rows where every row of image i holds the value i."""
    grid = torch.tensor(grids)
    rows = [torch.full((t * h * w, 3), float(i)) for i, (t, h, w) in enumerate(grids)]
    return torch.cat(rows), grid


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.just(1), st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=5),
       st.data())
def test_select_images_slices_each_image_by_its_grid(grids, data) -> None:
    pixels, grid = _pixels(grids)
    index = data.draw(st.lists(st.integers(0, len(grids) - 1), min_size=1, max_size=8))
    out = select_images(pixels, grid, index)
    expected = torch.cat([torch.full((t * h * w, 3), float(i)) for i in index for t, h, w in [grids[i]]])
    assert torch.equal(out, expected)


def test_select_images_rejects_inconsistent_grid() -> None:
    pixels, grid = _pixels([(1, 2, 2), (1, 2, 4)])
    with pytest.raises(ValueError, match="patch rows"):
        select_images(pixels[:-1], grid, [0])


def test_select_prompts_and_append_completions_extend_mm_types_with_zeros() -> None:
    pixels, grid = _pixels([(1, 2, 2), (1, 2, 4)])
    prompts = {"input_ids": torch.tensor([[0, 5, 6], [5, 5, 6]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
               "mm_token_type_ids": torch.tensor([[0, 1, 0], [1, 1, 0]]), "pixel_values": pixels,
               "image_grid_thw": grid}
    chosen = select_prompts(prompts, [1, 1, 0])
    assert chosen["input_ids"].tolist() == [[5, 5, 6], [5, 5, 6], [0, 5, 6]]
    assert chosen["image_grid_thw"].tolist() == [[1, 2, 4], [1, 2, 4], [1, 2, 2]]
    assert chosen["pixel_values"][:, 0].tolist() == [1.0] * 16 + [0.0] * 4
    completions = torch.tensor([[3, 7], [4, 4], [7, 0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    full = append_completions(chosen, completions, mask)
    assert full["input_ids"].tolist()[2] == [0, 5, 6, 7, 0]
    assert full["attention_mask"].tolist()[2] == [0, 1, 1, 1, 0]
    assert full["mm_token_type_ids"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 0, 0, 0]]
    assert full["attention_mask"].dtype == prompts["attention_mask"].dtype


def test_token_logprobs_equals_log_softmax_over_temperature() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen).to(torch.bfloat16)
    ids = torch.randint(0, 11, (3, 5), generator=gen)
    out = token_logprobs(logits, ids, temperature=0.7)
    expected = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, ids[..., None]).squeeze(-1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, ids, temperature=0.0)
