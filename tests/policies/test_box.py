"""BoxPolicy: the policy interface, answers that parse back to the boxes, the mixture's log densities and
sampling, the reuse of the sampling pass, reference, export, seeding, query and polarity handling, and short
GRPO / SFT learning runs on synthetic records (including sparse-reward GRPO through the real module)."""
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
from medloc_lightning.data.synth import SynthConfig, generate
from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback
from medloc_lightning.grpo import group_advantages, grpo_loss
from medloc_lightning.module import GRPOGroundingModule, SFTGroundingModule
from medloc_lightning.parsing import has_valid_format, parse_box
from medloc_lightning.policies import GroundingPolicy, Rollout, gt_boxes
from medloc_lightning.policies.box.policy import BoxPolicy, boxes_to_params, params_to_boxes, pixel_boxes
from medloc_lightning.policies.box.mixture import (component_std, mixture_log_weights, mixture_logprob,
                                                   sample_mixture)
from medloc_lightning.policies.box.net import MIN_SIZE, PATCH, patchify, query_ids, query_tokens
from medloc_lightning.rewards import GroundingReward

SMALL = dict(image_size=64, channels=16, query_dim=32, vocab_buckets=512)
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


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Sixteen 'lab' dermoscopy records (96 px, one small lesion each): a random box almost never reaches IoU 0.5."""
    out = tmp_path_factory.mktemp("synth-lab")
    generate(out, n=16, seed=7, modality="dermoscopy", size=96, config=SynthConfig.preset("lab"))
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
    assert set(rollout.info) == {"std_centre", "std_size", "mixture_entropy"}
    assert all(v.shape == (n,) for v in rollout.info.values())
    assert rollout.state.components.shape == (n,)


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
    images = torch.from_numpy(np.random.default_rng(0).random((2, 16, 24, 3), dtype=np.float32))
    images[1, ..., 1] *= 0.1
    t = images.permute(0, 3, 1, 2).double()
    standard = (t - t.mean((2, 3), keepdim=True)) / (t.std((2, 3), unbiased=False, keepdim=True) + 0.05)
    expected = torch.nn.functional.pixel_unshuffle(standard, PATCH).float()
    out = patchify(images)
    assert out.dtype == torch.float32 and out.shape == (2, 3 * PATCH * PATCH, 16 // PATCH, 24 // PATCH)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    torch.testing.assert_close(patchify(pixels), patchify(pixels.float() / 255), rtol=1e-5, atol=1e-5)


def test_patchify_of_the_negative_image_is_the_negative() -> None:
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8))
    torch.testing.assert_close(patchify(255 - pixels), -patchify(pixels), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- log densities
def test_logprobs_at_sampling_time_equal_the_rollout_logps(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    for temperature in (0.7, 1.0, 2.5):
        rollout = policy.sample(synth[:4], 6, temperature)
        again = policy.logprobs(rollout)
        assert again.shape == (24, 1) and again.requires_grad
        torch.testing.assert_close(again.detach(), rollout.logps, rtol=1e-5, atol=1e-5)


def test_logprob_is_the_mixture_log_density_at_the_temperature(synth: list[dict]) -> None:
    # independent reference: torch.distributions, weights softmax(logits / T), stds scaled by T, centre stds
    # proportional to each cell's own box side
    policy = BoxPolicy(**SMALL)
    batch, group, temperature = synth[:3], 5, 1.7
    rollout = policy.sample(batch, group, temperature)
    images, ids, offsets, _ = policy.encode(batch)
    with torch.no_grad():
        logits, means = policy.net(images, ids, offsets)
    mult = policy.net.std() * temperature
    sides = means[..., 2:].exp()
    stds = torch.cat([mult[:2] * sides, mult[2:].expand_as(sides)], -1)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits / temperature),
        torch.distributions.Independent(torch.distributions.Normal(means, stds), 1))
    expected = mixture.log_prob(rollout.state.params.view(len(batch), group, 4).transpose(0, 1)).T.reshape(-1, 1)
    torch.testing.assert_close(rollout.logps, expected, rtol=1e-5, atol=1e-4)


def test_sample_mixture_draws_each_row_from_its_component() -> None:
    torch.manual_seed(0)
    means = torch.tensor([[[0.2, 0.3, -2.0, -2.0], [0.8, 0.7, -1.0, -1.5]]])
    std = torch.tensor([0.1, 0.2, 0.05, 0.3])
    log_weights = mixture_log_weights(torch.tensor([[0.0, math.log(3.0)]]), 1.0)
    params, components = sample_mixture(log_weights, means, std, 2.0, 4000)
    assert params.shape == (4000, 4) and components.shape == (1, 4000)
    assert abs(components.float().mean().item() - 0.75) < 0.03  # weights 1/4, 3/4
    for c in (0, 1):
        rows = params[components[0] == c]
        expected_std = component_std(means[0, c], std, 2.0)
        torch.testing.assert_close(rows.mean(0), means[0, c], atol=4 * float(expected_std.max()) / 20, rtol=0)
        torch.testing.assert_close(rows.std(0) / expected_std, torch.ones(4), atol=0.1, rtol=0)


@settings(max_examples=50, deadline=None)
@given(shift=st.floats(-3, 3), scale=st.floats(0.05, 3.0))
def test_mixture_logprob_integrates_to_one_over_a_grid(shift: float, scale: float) -> None:
    # 1-d check of the density through the 4-d function: three dimensions at their means contribute a known
    # constant, the fourth is integrated numerically
    means = torch.tensor([[[0.5, 0.5, -2.0, shift], [0.5, 0.5, -2.0, shift + 1.0]]])
    stds = torch.tensor([[[0.1, 0.1, 0.1, scale], [0.1, 0.1, 0.1, scale / 2]]])
    grid = torch.linspace(shift - 12 * scale - 2, shift + 12 * scale + 3, 20001, dtype=torch.float64)
    params = torch.stack([torch.full_like(grid, 0.5), torch.full_like(grid, 0.5), torch.full_like(grid, -2.0), grid], 1)
    log_weights = torch.log(torch.tensor([[0.3, 0.7]]))
    dens = mixture_logprob(params, log_weights.double().expand(len(grid), 2), means.double().expand(len(grid), 2, 4),
                           stds.double().expand(len(grid), 2, 4)).exp().squeeze(1)
    rest = (2 * math.pi * 0.01) ** -1.5  # the three other dimensions, at their means
    assert abs(torch.trapezoid(dens, grid).item() / rest - 1.0) < 1e-3


def test_logprobs_of_row_subsets_match_the_full_rollout(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    rollout = policy.sample(synth[:4], 3, 1.0)
    full = policy.logprobs(rollout).detach()
    for rows in ([0], [11, 2, 5], [3, 4, 5], [7, 7, 0], list(range(12))):
        sub = policy.logprobs(rollout, torch.tensor(rows))
        assert sub.shape == (len(rows), 1)
        torch.testing.assert_close(sub.detach(), full[rows], rtol=1e-5, atol=1e-5)
    assert policy.logprobs(rollout, torch.tensor([], dtype=torch.long)).shape == (0, 1)


def test_the_first_logprobs_call_reuses_the_sampling_pass_only_while_the_weights_are_unchanged(
        synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    calls = []
    policy.net.register_forward_hook(lambda *_: calls.append(1))
    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.05)
    rollout = policy.sample(synth[:4], 3, 1.3)
    assert len(calls) == 1
    reused = policy.logprobs(rollout)
    assert len(calls) == 1 and reused.requires_grad  # no second forward
    fresh = policy.logprobs(rollout)  # the kept outputs are used once
    assert len(calls) == 2
    torch.testing.assert_close(reused.detach(), fresh.detach(), rtol=1e-6, atol=1e-6)
    reused.mean().backward()
    grads = {k: p.grad.clone() for k, p in policy.named_parameters()}
    policy.zero_grad()
    fresh.mean().backward()
    for k, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-5, atol=1e-7)

    # after an optimizer step the kept outputs are stale: logprobs runs the network again
    second = policy.sample(synth[:4], 3, 1.3)
    optimizer.step()
    calls.clear()
    after = policy.logprobs(second)
    assert len(calls) == 1
    assert (after.detach() - second.logps).abs().max() > 1e-4
    # without grad mode nothing is kept (evaluation, or the old log-probs of a multi-iteration step)
    with torch.no_grad():
        third = policy.sample(synth[:2], 2, 1.0)
    assert third.state.proposals is None


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
    assert torch.allclose(BoxPolicy(**SMALL, init_std=0.25).net.std(), torch.full((4,), 0.25))
    assert all("std" not in name for name, _ in policy.named_parameters())
    assert "net.fixed_std" in policy.state_dict()


def test_temperature_scales_the_std_and_flattens_the_mixture(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    images, ids, offsets, _ = policy.encode(synth[:2])
    with torch.no_grad():
        logits, means = policy.net(images, ids, offsets)
    spreads, entropies = {}, {}
    for temperature in (0.5, 2.0):
        torch.manual_seed(0)
        rollout = policy.sample(synth[:2], 400, temperature)
        components = rollout.state.components.view(2, 400)
        chosen = means.gather(1, components.unsqueeze(-1).expand(-1, -1, 4)).reshape(-1, 4)
        z = (rollout.state.params - chosen) / component_std(chosen, policy.net.std(), 1.0)
        spreads[temperature] = z.std(0)
        entropies[temperature] = rollout.info["mixture_entropy"][0].item()
        expected = policy.net.std()[:2].mean().item() * temperature
        assert rollout.info["std_centre"][0].item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(spreads[0.5], torch.full((4,), 0.5), atol=0.05, rtol=0)
    torch.testing.assert_close(spreads[2.0], torch.full((4,), 2.0), atol=0.2, rtol=0)
    assert entropies[2.0] > entropies[0.5]


# ---------------------------------------------------------------- reference
def test_reference_is_a_frozen_copy_made_by_enable_reference(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    rollout = policy.sample(synth[:3], 4, 1.0)
    with pytest.raises(RuntimeError, match="enable_reference"):
        policy.logprobs(rollout, reference=True)
    n_params, keys = len(list(policy.parameters())), set(policy.state_dict())
    policy.enable_reference()
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
    meta = json.loads((tmp_path / "out" / "box_policy.json").read_text())
    assert meta["config"]["seed"] == 4 and meta["version"] == 2
    meta["version"] = 1
    (tmp_path / "out" / "box_policy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'version'"):
        BoxPolicy.from_export(str(tmp_path / "out"))


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
        logits, means = policy.net(images, ids, offsets)
    assert (logits[0] - logits[1]).abs().max() > 1e-3 and (means[0] - means[1]).abs().max() > 1e-3


def test_without_a_polarity_the_network_cannot_tell_an_image_from_its_negative() -> None:
    # The query's polarity sign is the only way intensity sign enters: at sign 0 (an untrained query) dark and
    # bright targets look alike, which is what lets an untrained policy find both.
    policy = BoxPolicy(**SMALL)
    record = noise_record(5, 64, 64)  # the network's own side: no resampling, so the negative is exact
    negative = dict(record, image=Image.fromarray(255 - np.asarray(record["image"])))
    images, ids, offsets, _ = policy.encode([record, negative])
    with torch.no_grad():
        signed = policy.net(images, ids, offsets)
        torch.nn.init.zeros_(policy.net.polarity.weight)
        torch.nn.init.zeros_(policy.net.polarity.bias)
        unsigned = policy.net(images, ids, offsets)
    assert (signed.logits[0] - signed.logits[1]).abs().max() > 1e-4
    torch.testing.assert_close(unsigned.logits[0], unsigned.logits[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(unsigned.means[0], unsigned.means[1], rtol=1e-4, atol=1e-5)


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
    with pytest.raises(ValueError, match="min_std > 0"):
        BoxPolicy(min_std=0.0)
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
    sampled = [grpo_step(policy, optimizer, batch, 8).mean().item() for _ in range(80)]
    end = mean_iou(policy, batch)
    # seeds 0-3 of this set-up: greedy mean IoU from <= 0.06 to 0.59-0.86, sampled from about 0.1 to 0.52-0.72
    # (the single-Gaussian policy this one replaced: 0.31-0.58 and 0.25-0.46)
    assert end > start + 0.4, (start, end)
    assert np.mean(sampled[-20:]) > np.mean(sampled[:20]) + 0.3, (sampled[:20], sampled[-20:])


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
    # seeds 0-3: the NLL falls from about 1.1 to about -7.8, and mean IoU rises from <= 0.06 to 1.00
    assert losses[-1] < losses[0] - 4.0, losses[::10]
    assert mean_iou(policy, batch) > max(start_iou + 0.4, 0.8)


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
                                 num_iterations=2, micro_batch_size=6)
    callback = ThresholdCurriculumCallback()
    trainer, logged, validated = run_trainer(module, synth[:8], 4, (callback,))  # 2 rollouts x 2 steps each
    assert trainer.global_step == 4
    assert policy.logprobs(policy.sample(synth[:1], 2, 1.0), reference=True).shape == (2, 1)  # beta > 0 enabled it
    assert logged["train/std_centre"] > 0 and logged["train/mixture_entropy"] > 0 and logged["train/parse_rate"] == 1.0 and math.isfinite(logged["train/kl"])
    assert validated["val/parse_rate"] == 1.0 and 0 <= validated["val/miou"] <= 1
    assert any(not torch.equal(start[k], v) for k, v in policy.state_dict().items())
    for key, value in policy._reference.state_dict().items():
        assert torch.equal(value, start[f"net.{key}"]), key


class RecordIoUs(pl.Callback):
    """Keeps the sampled IoUs that each GRPO training step returns."""

    def __init__(self) -> None:
        self.steps: list[Tensor] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: dict, batch: list,
                           batch_idx: int) -> None:
        self.steps.append(outputs["ious"].detach().cpu())


def test_sparse_reward_grpo_through_the_module_learns_from_scratch_without_collapsing(lab: list[dict]) -> None:
    # The paper's regime: the binary reward 1[IoU >= 0.3], which an untrained policy almost never earns, at a
    # learning rate above the quickstart's. The single-Gaussian BoxPolicy this one replaced stayed at a hit rate
    # of 0-0.14 here (policy seeds 1, 2), and with seed 2 collapsed to boxes that all scored IoU 0: every group
    # zero-std, so no gradient could ever bring it back. Seeds 1-3 of this one: 0.88-0.99 in the last 20 steps.
    policy = BoxPolicy(**dict(SMALL, image_size=96), seed=2)
    module = GRPOGroundingModule(policy, num_generations=8, temperature=1.0, iou_threshold=0.3, learning_rate=1e-2,
                                 micro_batch_size=64)
    record = RecordIoUs()
    trainer = pl.Trainer(accelerator="cpu", max_steps=150, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[record])
    loader = DataLoader(lab, batch_size=8, collate_fn=list, shuffle=True, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    hits = [float((ious >= 0.3).float().mean()) for ious in record.steps]
    last = torch.cat(record.steps[-20:])
    assert np.mean(hits[:3]) < 0.1, hits[:3]
    assert np.mean(hits[-20:]) > 0.7, hits[-20:]
    assert float((last == 0).float().mean()) < 0.2 and float(last.mean()) > 0.35, last
    assert bool((policy.net.std() >= policy.net.min_std).all())


def test_sft_module_trains_box_policy(synth: list[dict]) -> None:
    policy = BoxPolicy(**SMALL)
    trainer, logged, validated = run_trainer(SFTGroundingModule(policy, learning_rate=3e-3), synth[:8], 3)
    assert trainer.global_step == 3 and math.isfinite(logged["train/sft_loss"])
    assert validated["val/parse_rate"] == 1.0
