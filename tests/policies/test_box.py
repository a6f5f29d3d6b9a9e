"""BoxPolicy: the policy interface, answers that parse back to the boxes, log densities, reference, export,
seeding, query sensitivity, and short GRPO / SFT learning runs on synthetic records."""
from __future__ import annotations

import json
import math
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

import lightning.pytorch as pl
from medloc_lightning.boxes import box_iou
from medloc_lightning.data.synth import generate
from medloc_lightning.callback import ThresholdCurriculumCallback
from medloc_lightning.grpo import group_advantages, grpo_loss
from medloc_lightning.module import GRPOGroundingModule, SFTGroundingModule
from medloc_lightning.parsing import has_valid_format, parse_box
from medloc_lightning.policies import GroundingPolicy, Rollout, gt_boxes
from medloc_lightning.policies.box import BoxPolicy, boxes_to_params, params_to_boxes, pixel_boxes
from medloc_lightning.policies.box_net import MIN_SIZE, PATCH, patchify, query_ids, query_tokens

SMALL = dict(image_size=64, channels=16, query_dim=32, vocab_buckets=512, hidden=64)
"""A small BoxPolicy: the learning tests stay fast on a loaded 2-core box."""


def load_split(out: Path, split: str) -> list[dict]:
    records = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
    for r in records:
        with Image.open(out / r["image"]) as im:
            r["image"] = im.convert("RGB")
    return records


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Ten mixed-modality synthetic records (96 px), all splits together."""
    out = tmp_path_factory.mktemp("synth-box")
    generate(out, n=10, seed=3, modality="mixed", size=96)
    return [r for split in ("train", "val", "test") for r in load_split(out, split)]


def noise_record(index: int, width: int, height: int, query: str = "the lesion on the left") -> dict:
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return {"id": f"noise-{index}", "image": Image.fromarray(pixels, "RGB"), "query": query,
            "bbox": [width * 0.2, height * 0.3, width * 0.6, height * 0.9], "width": width, "height": height}


@pytest.fixture(scope="module")
def odd_sizes() -> list[dict]:
    """Non-square records, one of them tiny, with a grayscale image among them."""
    records = [noise_record(i, w, h) for i, (w, h) in enumerate([(200, 90), (37, 151), (3, 2), (64, 64)])]
    records[3]["image"] = records[3]["image"].convert("L")
    return records


def grpo_step(policy: BoxPolicy, optimizer: torch.optim.Optimizer, batch: list[dict], group: int) -> Tensor:
    """One on-policy GRPO update with raw IoU rewards; returns the sampled IoUs."""
    rollout = policy.sample(batch, group, 1.0)
    ious = box_iou(rollout.boxes, gt_boxes(batch).repeat_interleave(group, 0))
    advantages = group_advantages(ious.view(len(batch), group)).flatten()
    loss, _ = grpo_loss(policy.logprobs(rollout), rollout.logps, advantages, rollout.mask)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return ious


def mean_iou(policy: BoxPolicy, batch: list[dict]) -> float:
    _, boxes = policy.predict(batch)
    return box_iou(boxes, gt_boxes(batch)).mean().item()


# ---------------------------------------------------------------- interface and answers
def test_sample_conforms_to_the_rollout_contract(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    assert isinstance(policy, GroundingPolicy)
    batch, group = synth[:3], 4
    rollout = policy.sample(batch, group, 1.0)
    n = len(batch) * group
    assert isinstance(rollout, Rollout) and rollout.num_generations == group
    assert rollout.num_rows == n and rollout.num_prompts == len(batch) and len(rollout.texts) == n
    assert rollout.boxes.shape == (n, 4) and rollout.boxes.dtype == torch.float32
    assert rollout.mask.shape == (n, 1) and rollout.mask.dtype == torch.float32 and bool((rollout.mask == 1).all())
    assert rollout.logps is not None and rollout.logps.shape == (n, 1) and rollout.logps.dtype == torch.float32
    assert not rollout.logps.requires_grad and torch.isfinite(rollout.logps).all()
    assert rollout.kept is None and rollout.rejected == {}
    assert rollout.info["std_mean"].shape == (n,)


def test_answers_parse_back_to_exactly_the_boxes(synth: list[dict], odd_sizes: list[dict]) -> None:
    policy = BoxPolicy(**SMALL, answer_label="nodule")
    for batch in (synth[:4], odd_sizes):
        rollout = policy.sample(batch, 5, 3.0)
        for text, box in zip(rollout.texts, rollout.boxes.tolist()):
            assert parse_box(text) == tuple(box)
            assert has_valid_format(text, require_think=False) and '"label": "nodule"' in text
        texts, boxes = policy.predict(batch)
        assert [parse_box(t) for t in texts] == [tuple(b) for b in boxes.tolist()]


def test_sampled_boxes_are_integer_pixel_boxes_inside_each_image(odd_sizes: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    rollout = policy.sample(odd_sizes, 16, 20.0)  # a very wide spread pushes many samples past the borders
    sizes = torch.tensor([[r["width"], r["height"]] for r in odd_sizes], dtype=torch.float32).repeat_interleave(16, 0)
    boxes = rollout.boxes
    assert bool((boxes == boxes.round()).all())
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= sizes).all())
    assert bool((boxes[:, 2:] > boxes[:, :2]).all())


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(params=st.lists(st.tuples(finite, finite, finite, finite), min_size=1, max_size=6),
       width=st.integers(1, 3000), height=st.integers(1, 3000))
def test_any_parameters_map_to_a_valid_box_inside_the_image(params, width: int, height: int) -> None:
    p = torch.tensor(params, dtype=torch.float32)
    sizes = torch.tensor([[width, height]], dtype=torch.float32).expand(len(params), 2)
    continuous = params_to_boxes(p, sizes)
    assert bool((continuous[:, 2:] > continuous[:, :2]).all())
    boxes = pixel_boxes(continuous, sizes)
    assert bool((boxes == boxes.round()).all())
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= sizes).all() and (boxes[:, 2:] > boxes[:, :2]).all())


@settings(max_examples=100, deadline=None)
@given(width=st.integers(50, 2000), height=st.integers(50, 2000),
       fractions=st.tuples(*[st.floats(0.0, 1.0)] * 4))
def test_box_parameters_invert_for_boxes_inside_the_image(width: int, height: int, fractions) -> None:
    fx1, fy1, fx2, fy2 = fractions
    x1, x2 = sorted((fx1 * width, fx2 * width))
    y1, y2 = sorted((fy1 * height, fy2 * height))
    x2, y2 = max(x2, x1 + MIN_SIZE * width), max(y2, y1 + MIN_SIZE * height)  # sides above the floor
    assume(x2 <= width and y2 <= height)
    box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64)
    sizes = torch.tensor([[width, height]], dtype=torch.float64)
    assert torch.allclose(params_to_boxes(boxes_to_params(box, sizes), sizes), box, atol=1e-6 * max(width, height))


def test_patchify_standardises_each_channel_then_unshuffles() -> None:
    pixels = np.random.default_rng(0).random((3, 16, 24), dtype=np.float32)
    pixels[1] *= 0.1
    t = torch.from_numpy(pixels)
    standard = (t - t.mean((1, 2), keepdim=True)) / (t.std((1, 2), unbiased=False, keepdim=True) + 0.05)
    expected = torch.nn.functional.pixel_unshuffle(standard.unsqueeze(0), PATCH)[0]
    out = patchify(pixels)
    assert out.dtype == np.float32 and out.shape == (3 * PATCH * PATCH, 16 // PATCH, 24 // PATCH)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- log densities
def test_logprobs_at_sampling_time_equal_the_rollout_logps(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    for temperature in (0.7, 1.0, 2.5):
        rollout = policy.sample(synth[:4], 6, temperature)
        again = policy.logprobs(rollout)
        assert again.shape == (24, 1) and again.requires_grad
        torch.testing.assert_close(again.detach(), rollout.logps, rtol=1e-5, atol=1e-5)


def test_logprob_is_the_gaussian_log_density_at_the_scaled_std(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    batch, group, temperature = synth[:3], 5, 1.7
    rollout = policy.sample(batch, group, temperature)
    images, ids, offsets, _ = policy.encode(batch)
    with torch.no_grad():
        mean = policy.net(images, ids, offsets).repeat_interleave(group, 0)
    normal = torch.distributions.Normal(mean, policy.net.std() * temperature)
    expected = normal.log_prob(rollout.state.params).sum(1, keepdim=True)
    torch.testing.assert_close(rollout.logps, expected, rtol=1e-5, atol=1e-5)


def test_logprobs_of_row_subsets_match_the_full_rollout(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    rollout = policy.sample(synth[:4], 3, 1.0)
    full = policy.logprobs(rollout).detach()
    for rows in ([0], [11, 2, 5], [3, 4, 5], [7, 7, 0], list(range(12))):
        sub = policy.logprobs(rollout, torch.tensor(rows))
        assert sub.shape == (len(rows), 1)
        torch.testing.assert_close(sub.detach(), full[rows], rtol=1e-5, atol=1e-5)
    assert policy.logprobs(rollout, torch.tensor([], dtype=torch.long)).shape == (0, 1)


def test_gradients_reach_every_part_of_the_network(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    rollout = policy.sample(synth[:4], 4, 1.0)
    policy.logprobs(rollout).sum().backward()
    net = policy.net
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_fixed_std_is_not_trained() -> None:
    policy = BoxPolicy(**SMALL, learn_std=False, init_std=0.3)
    assert torch.equal(policy.net.std(), torch.full((4,), 0.3))
    assert all("std" not in name for name, _ in policy.named_parameters())
    assert "net.fixed_std" in policy.state_dict()


def test_temperature_scales_the_spread(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    spreads = {}
    for temperature in (0.5, 2.0):
        torch.manual_seed(0)
        rollout = policy.sample(synth[:2], 64, temperature)
        params = rollout.state.params.view(2, 64, 4)
        spreads[temperature] = params.std(1).mean().item()
        expected = policy.net.std().mean().item() * temperature
        assert rollout.info["std_mean"][0].item() == pytest.approx(expected, rel=1e-5)
    # same noise draws, so the spread scales exactly with the temperature
    assert spreads[2.0] == pytest.approx(4 * spreads[0.5], rel=1e-4)


# ---------------------------------------------------------------- reference
def test_reference_is_a_frozen_copy_made_by_enable_reference(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    rollout = policy.sample(synth[:3], 4, 1.0)
    assert not policy.has_reference_copy
    with pytest.raises(RuntimeError, match="enable_reference"):
        policy.logprobs(rollout, reference=True)
    n_params, keys = len(list(policy.parameters())), set(policy.state_dict())
    policy.enable_reference()
    assert policy.has_reference_copy
    assert len(list(policy.parameters())) == n_params and set(policy.state_dict()) == keys
    before = policy.logprobs(rollout).detach()
    ref = policy.logprobs(rollout, reference=True)
    assert not ref.requires_grad
    torch.testing.assert_close(ref, before, rtol=0, atol=0)

    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.05)
    (-policy.logprobs(rollout).mean()).backward()
    optimizer.step()
    after = policy.logprobs(rollout).detach()
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(policy.logprobs(rollout, reference=True), before, rtol=0, atol=0)


# ---------------------------------------------------------------- export and seeding
def test_export_round_trip(tmp_path: Path, synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL, answer_label="spot", learn_std=False, init_std=0.2, seed=4)
    policy.export(str(tmp_path / "out"))
    loaded = BoxPolicy.from_export(str(tmp_path / "out"))
    assert loaded.config == policy.config
    for key, value in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    (texts, boxes), (loaded_texts, loaded_boxes) = policy.predict(synth[:4]), loaded.predict(synth[:4])
    assert loaded_texts == texts and '"label": "spot"' in texts[0]
    assert torch.equal(loaded_boxes, boxes)
    assert json.loads((tmp_path / "out" / "box_policy.json").read_text())["config"]["seed"] == 4


def test_from_export_rejects_a_folder_without_an_export(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="box_policy.json"):
        BoxPolicy.from_export(str(tmp_path))
    (tmp_path / "box_policy.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="'format'"):
        BoxPolicy.from_export(str(tmp_path))


def test_initialisation_is_determined_by_the_seed_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = BoxPolicy(**SMALL, seed=7), BoxPolicy(**SMALL, seed=7), BoxPolicy(**SMALL, seed=8)
    assert torch.equal(torch.rand(3), expected_draw)
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key
    assert any(not torch.equal(c.state_dict()[k], v) for k, v in a.state_dict().items())


# ---------------------------------------------------------------- queries
def test_query_tokens_are_lowercased_words_and_bigrams() -> None:
    assert query_tokens("The Smaller, dark lesion") == [
        "w:the", "w:smaller", "w:dark", "w:lesion", "b:the smaller", "b:smaller dark", "b:dark lesion"]
    assert query_tokens("") == [] and query_tokens("x-ray: 2nd_spot") == [
        "w:x", "w:ray", "w:2nd", "w:spot", "b:x ray", "b:ray 2nd", "b:2nd spot"]
    assert query_tokens("Naïve CAFÉ") == ["w:naïve", "w:café", "b:naïve café"]
    assert set(query_ids("left lesion", 4096)) != set(query_ids("lesion left", 4096))  # bigrams keep word order
    assert all(0 <= i < 7 for i in query_ids("the nodule near the top", 7))


def test_query_hashing_is_crc32_so_ids_agree_across_processes() -> None:
    # Python's hash() of a str is salted per process; crc32 of the UTF-8 token is not.
    tokens = ("w:left", "w:lesion", "b:left lesion")
    assert query_ids("Left lesion", 1000) == [zlib.crc32(t.encode()) % 1000 for t in tokens]
    assert query_ids("naïve", 97) == [zlib.crc32("w:naïve".encode("utf-8")) % 97]


def test_the_query_changes_the_prediction_of_an_initialised_model() -> None:
    image = noise_record(0, 224, 224)
    first = dict(image, query="the smaller dark lesion on the left")
    second = dict(image, query="the nodule near the top")
    policy = BoxPolicy()
    images, ids, offsets, _ = policy.encode([first, second])
    with torch.no_grad():
        means = policy.net(images, ids, offsets)
    assert (means[0] - means[1]).abs().max() > 1e-3
    _, boxes = policy.predict([first, second])
    assert not torch.equal(boxes[0], boxes[1])


# ---------------------------------------------------------------- bad input
def test_bad_records_raise_errors_naming_the_record_and_field(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    good = synth[0]
    cases = [(dict(good, image=np.zeros((4, 4, 3))), "'image' must be a PIL image"),
             (dict(good, width=good["width"] + 1), "'width', 'height' say"),
             (dict(good, query=None), "'query' must be a str"),
             ({k: v for k, v in good.items() if k != "height"}, "'width' and 'height'")]
    for record, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            policy.sample([record], 2, 1.0)
        assert repr(good["id"]) in str(err.value)


def test_bad_arguments_are_rejected(synth: list[dict]) -> None:
    with pytest.raises(ValueError, match="image_size"):
        BoxPolicy(image_size=100)
    with pytest.raises(ValueError, match="init_std > min_std"):
        BoxPolicy(init_std=0.01, min_std=0.02)
    policy = BoxPolicy(**SMALL)
    for group, temperature in ((0, 1.0), (2, 0.0), (2, math.nan)):
        with pytest.raises(ValueError):
            policy.sample(synth[:1], group, temperature)
    foreign = Rollout(num_generations=1, texts=[""], boxes=torch.zeros(1, 4), mask=torch.ones(1, 1))
    with pytest.raises(ValueError, match="BoxPolicy.sample"):
        policy.logprobs(foreign)


def test_an_empty_batch_gives_an_empty_rollout() -> None:
    policy = BoxPolicy(**SMALL)
    rollout = policy.sample([], 4, 1.0)
    assert rollout.num_rows == 0 and rollout.texts == [] and rollout.mask.shape == (0, 1)
    assert policy.logprobs(rollout).shape == (0, 1)
    texts, boxes = policy.predict([])
    assert texts == [] and boxes.shape == (0, 4)


# ---------------------------------------------------------------- learning
def test_grpo_with_iou_rewards_improves_mean_iou(synth: list[dict]) -> None:
    torch.manual_seed(0)
    batch = synth[:8]
    policy = BoxPolicy(**SMALL, seed=1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    start = mean_iou(policy, batch)
    sampled = [grpo_step(policy, optimizer, batch, 8).mean().item() for _ in range(150)]
    end = mean_iou(policy, batch)
    # seeds 0-3 of this set-up gain 0.19-0.47 (greedy) and 0.15-0.41 (sampled) from about 0.06
    assert end > start + 0.15, (start, end)
    assert np.mean(sampled[-20:]) > np.mean(sampled[:20]) + 0.1, (sampled[:20], sampled[-20:])


def test_sft_loss_decreases_and_regresses_the_boxes(synth: list[dict]) -> None:
    torch.manual_seed(0)
    batch = synth[:8]
    policy = BoxPolicy(**SMALL, seed=2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    start_iou, losses = mean_iou(policy, batch), []
    for _ in range(60):
        loss = policy.sft_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # seeds 0-3: the NLL falls from about 9 to about -4.9, and mean IoU rises from about 0.05 to 0.76-0.99
    assert losses[-1] < losses[0] - 4.0, losses[::10]
    assert mean_iou(policy, batch) > start_iou + 0.4


# ---------------------------------------------------------------- the real modules
def run_trainer(module: pl.LightningModule, records: list[dict], steps: int,
                callbacks: tuple = ()) -> tuple[pl.Trainer, dict[str, float], dict[str, float]]:
    """Fit for ``steps`` optimizer steps, then validate; returns the trainer, the last training metrics and
    the validation metrics."""
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    loader = DataLoader(records, batch_size=4, collate_fn=list, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
        logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
        validated = trainer.validate(module, loader, verbose=False)[0]
    return trainer, logged, validated


def test_grpo_module_trains_box_policy_with_reference_chunks_and_reused_rollouts(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    # micro_batch_size 6 with G = 4: row chunks straddle prompts; beta > 0 asks for the reference copy
    module = GRPOGroundingModule(policy, num_generations=4, temperature=1.0, learning_rate=3e-3, beta=0.04,
                                 num_iterations=2, micro_batch_size=6, log_samples_every=0)
    callback = ThresholdCurriculumCallback()
    trainer, logged, validated = run_trainer(module, synth[:8], 4, (callback,))  # 2 rollouts x 2 steps each
    assert trainer.global_step == 4 and policy.has_reference_copy
    assert logged["train/std_mean"] > 0 and logged["train/parse_rate"] == 1.0 and math.isfinite(logged["train/kl"])
    assert validated["val/parse_rate"] == 1.0 and 0 <= validated["val/miou"] <= 1
    assert any(not torch.equal(start[k], v) for k, v in policy.state_dict().items())
    for key, value in policy._reference.state_dict().items():
        assert torch.equal(value, start[f"net.{key}"]), key


def test_sft_module_trains_box_policy(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    trainer, logged, validated = run_trainer(SFTGroundingModule(policy, learning_rate=3e-3), synth[:8], 3)
    assert trainer.global_step == 3 and math.isfinite(logged["train/sft_loss"])
    assert validated["val/parse_rate"] == 1.0
