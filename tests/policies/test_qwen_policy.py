"""QwenVLPolicy on the tiny offline Qwen2.5-VL: prompts, sampling, log-probs, reference, SFT, export."""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from qwen_helpers import SHORT_CONTEXT, logit_bias, make_record, make_records

from medloc_lightning.boxes import ImageGeometry
from medloc_lightning.parsing import DEFAULT_PROMPT_TEMPLATE, build_prompt, format_answer
from medloc_lightning.policies import GroundingPolicy, Rollout
from medloc_lightning.policies.base import Sharding
from medloc_lightning.policies.qwen import QwenVLPolicy
from medloc_lightning.policies.qwen.batch import append_completions, select_prompts, token_logprobs
from medloc_lightning.policies.qwen.loading import vision_tower
from medloc_lightning.policies.qwen.model import train_mode_without_dropout
from medloc_lightning.policies.qwen.processor import VISION_SPECIAL_TOKENS, load_processor

MAX_PIXELS = 224 * 224
SIZES = ((64, 48), (40, 90), (32, 32))


def make_policy(path: str, **kwargs) -> QwenVLPolicy:
    kwargs.setdefault("max_pixels", MAX_PIXELS)
    kwargs.setdefault("max_new_tokens", 12)
    policy = QwenVLPolicy(path, **kwargs)
    policy.configure()
    return policy


@pytest.fixture(scope="module")
def policy(tiny_qwen_dir: str) -> QwenVLPolicy:
    """A read-only full-model policy (tests that train build their own)."""
    return make_policy(tiny_qwen_dir)


def one_step(policy: QwenVLPolicy, loss: torch.Tensor, lr: float = 1e-2) -> None:
    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=lr)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a - b)[mask.bool()].abs().max().item()


# ---------------------------------------------------------------- prompts and processor
def test_prompt_is_one_user_turn_with_image_and_template(policy: QwenVLPolicy) -> None:
    text = policy.prompt_text(make_record(0, 32, 32, query="thyroid nodule"))
    user = build_prompt("thyroid nodule", DEFAULT_PROMPT_TEMPLATE)
    assert text.count("<|im_start|>user") == 1 and text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert user in text and text.endswith("<|im_start|>assistant\n")
    assert text.index("<|image_pad|>") < text.index(user)


@settings(max_examples=25, deadline=None)
@given(width=st.integers(8, 300), height=st.integers(8, 300),
       bounds=st.sampled_from([(56 * 56, 224 * 224), (28 * 28, 112 * 112), (3136, 12845056), (100 * 100, 100 * 100)]))
def test_processor_grid_matches_smart_resize(tiny_qwen_dir: str, width: int, height: int, bounds) -> None:
    processor = _processor(tiny_qwen_dir, *bounds)
    out = processor.image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")
    geometry = ImageGeometry.from_size(width, height, min_pixels=bounds[0], max_pixels=bounds[1])
    assert ImageGeometry.from_grid_thw(width, height, out["image_grid_thw"][0]) == geometry


_PROCESSORS: dict = {}


def _processor(path: str, min_pixels: int, max_pixels: int):
    key = (path, min_pixels, max_pixels)
    if key not in _PROCESSORS:
        _PROCESSORS[key] = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
    return _PROCESSORS[key]


def test_mixed_sizes_batch_geometry_uses_the_processor_grid(policy: QwenVLPolicy) -> None:
    batch = make_records((64, 48), (224, 100), (30, 200))
    enc = policy.encode(batch)
    for record, geometry in zip(batch, enc.geometries):
        assert geometry == ImageGeometry.from_size(record["width"], record["height"], max_pixels=MAX_PIXELS)


def test_constructor_validates_arguments(tiny_qwen_dir: str) -> None:
    with pytest.raises(ValueError, match="lora_r > 0"):
        QwenVLPolicy(tiny_qwen_dir, quantization="4bit")
    with pytest.raises(ValueError, match="quantization"):
        QwenVLPolicy(tiny_qwen_dir, quantization="3bit", lora_r=4)
    with pytest.raises(ValueError, match="query"):
        QwenVLPolicy(tiny_qwen_dir, prompt_template="no placeholder")
    with pytest.raises(ValueError, match="dtype"):
        QwenVLPolicy(tiny_qwen_dir, dtype="float8")
    with pytest.raises(ValueError, match="min_pixels"):
        QwenVLPolicy(tiny_qwen_dir, min_pixels=10_000, max_pixels=5_000)


def test_record_with_wrong_size_fields_is_named(policy: QwenVLPolicy) -> None:
    record = make_record(3, 32, 32)
    record["width"] = 33
    with pytest.raises(ValueError, match="rec-3.*'width'"):
        policy.sample([record], 2, 1.0)


# ---------------------------------------------------------------- sampling
def test_sample_shapes_and_diagnostics(policy: QwenVLPolicy) -> None:
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES), 3, 0.8)
    assert isinstance(policy, GroundingPolicy) and isinstance(rollout, Rollout)
    n, width = 9, rollout.mask.shape[1]
    assert rollout.num_rows == n and rollout.num_prompts == 3 and len(rollout.texts) == n
    assert rollout.boxes.shape == (n, 4) and rollout.boxes.dtype == torch.float32
    assert 1 <= width <= policy.max_new_tokens and rollout.mask.dtype == torch.float32
    assert rollout.logps is None and rollout.kept == [0, 1, 2] and rollout.rejected == {}
    assert rollout.info["truncated"].shape == (n,)
    assert rollout.state.temperature == 0.8
    assert rollout.state.prompts["input_ids"].shape[0] == 3  # per prompt, not expanded G times


def test_mask_ends_at_first_eos_and_text_stops_there(policy: QwenVLPolicy) -> None:
    eos = policy.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(1)
    with logit_bias(policy.model, {eos: 6.0}):
        rollout = policy.sample(make_records(*SIZES), 4, 1.0)
    ids = rollout.state.completion_ids
    ended = 0
    for row in range(rollout.num_rows):
        tokens = ids[row].tolist()
        stops = [t for t, tok in enumerate(tokens) if tok in policy.eos_token_ids]
        length = stops[0] + 1 if stops else len(tokens)
        assert rollout.mask[row].tolist() == [1.0] * length + [0.0] * (len(tokens) - length)
        assert rollout.info["truncated"][row].item() == (0.0 if stops else 1.0)
        expected = policy.processor.tokenizer.decode(tokens[:length], skip_special_tokens=True)
        assert rollout.texts[row] == expected
        ended += bool(stops) and length < len(tokens)
    assert ended >= 2, "the EOS bias should end several completions early"


def test_vision_special_tokens_are_never_sampled(policy: QwenVLPolicy) -> None:
    tok = policy.processor.tokenizer
    special = [tok.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
    assert set(special) <= set(policy.suppress_token_ids)
    torch.manual_seed(2)
    with logit_bias(policy.model, {i: 12.0 for i in special}):  # they would win nearly every draw
        rollout = policy.sample(make_records(*SIZES), 4, 1.0)
        texts, _ = policy.predict(make_records(*SIZES))
    assert not torch.isin(rollout.state.completion_ids, torch.tensor(special)).any()
    assert len(texts) == 3


def test_checkpoint_sampling_defaults_never_leak_in(tiny_qwen_dir: str, tmp_path) -> None:
    """A checkpoint shipping near-greedy defaults (as Qwen's Instruct configs do) still samples at the
    requested temperature, and export writes those defaults back unchanged."""
    folder = tmp_path / "greedy-defaults"
    shutil.copytree(tiny_qwen_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(top_k=1, top_p=0.001, temperature=0.01, repetition_penalty=1.5, do_sample=True)
    (folder / "generation_config.json").write_text(json.dumps(config))
    policy = make_policy(str(folder))
    torch.manual_seed(0)
    rollout = policy.sample(make_records((64, 48)), 4, 1.0)
    assert len({tuple(row.tolist()) for row in rollout.state.completion_ids}) == 4  # top_k=1 would repeat
    sampling = policy.generation_config(do_sample=True, temperature=0.37)
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.repetition_penalty) == (0.37, 1.0, 0, 1.0)
    policy.export(str(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / "generation_config.json").read_text())["top_k"] == 1


def test_boxes_are_parsed_and_mapped_to_original_pixels(policy: QwenVLPolicy) -> None:
    batch = make_records((64, 48), (40, 90))
    enc = policy.encode(batch)
    model_boxes = [(8, 9, 30, 35), (4, 10, 20, 60)]
    answers = [format_answer(b) for b in model_boxes]
    boxes = policy._boxes(answers + ["no box here"], enc.geometries + enc.geometries[:1], 1)
    for row, (box, geometry) in enumerate(zip(model_boxes, enc.geometries)):
        torch.testing.assert_close(boxes[row], torch.tensor(geometry.to_original(box), dtype=torch.float32))
    assert torch.isnan(boxes[2]).all()


# ---------------------------------------------------------------- log-probs
def _generation_logprobs(policy: QwenVLPolicy, batch, group: int, temperature: float, seed: int):
    """Completion ids and log-probs from generate's own logits, replaying ``sample``'s RNG."""
    enc = policy.encode(batch, policy.max_new_tokens)
    config = policy.generation_config(do_sample=True, temperature=temperature, num_return_sequences=group)
    config.output_logits, config.return_dict_in_generate = True, True
    torch.manual_seed(seed)
    with torch.no_grad(), train_mode_without_dropout(policy.model):
        out = policy.model.generate(**enc.prompts, generation_config=config)
    ids = out.sequences[:, enc.prompts["input_ids"].shape[1]:]
    logits = torch.stack(out.logits, 1)
    return ids, token_logprobs(logits, ids, temperature)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_logprobs_match_generation_scores(tiny_qwen_dir: str, lora: bool) -> None:
    kwargs = {"lora_r": 4, "lora_dropout": 0.3} if lora else {}
    policy = make_policy(tiny_qwen_dir, **kwargs)
    if lora:  # non-zero adapters, so LoRA (and its dropout) actually matter
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    batch, group, temperature = make_records(*SIZES), 3, 0.7
    torch.manual_seed(5)
    rollout = policy.sample(batch, group, temperature)
    ids, expected = _generation_logprobs(policy, batch, group, temperature, seed=5)
    assert torch.equal(ids, rollout.state.completion_ids)
    with torch.no_grad():
        scored = policy.logprobs(rollout)
    assert masked_max_diff(scored, expected, rollout.mask) < 1e-5
    # Without the zero-extended mm_token_type_ids the model falls back to 1-D positions.
    rows = torch.arange(rollout.num_rows)
    inputs = append_completions(select_prompts(rollout.state.prompts, (rows // group).tolist()), ids, rollout.mask)
    del inputs["mm_token_type_ids"]
    with torch.no_grad(), train_mode_without_dropout(policy.model):
        logits = policy.model(**inputs, use_cache=False).logits[:, -ids.shape[1] - 1:-1]
    assert masked_max_diff(token_logprobs(logits, ids, temperature), expected, rollout.mask) > 1e-4
    if lora:  # the gradient pass keeps LoRA dropout; the no-grad passes do not
        assert masked_max_diff(policy.logprobs(rollout), expected, rollout.mask) > 1e-4


def test_row_subsets_and_chunking_agree_with_the_full_call(tiny_qwen_dir: str) -> None:
    policy = make_policy(tiny_qwen_dir, logprob_batch_size=16)
    torch.manual_seed(3)
    rollout = policy.sample(make_records(*SIZES), 4, 0.9)
    with torch.no_grad():
        full = policy.logprobs(rollout)
        rows = torch.tensor([11, 0, 5, 5])
        torch.testing.assert_close(policy.logprobs(rollout, rows) * rollout.mask[rows], full[rows] * rollout.mask[rows],
                                   atol=1e-5, rtol=0)
        for size in (1, 5):
            policy.logprob_batch_size = size
            torch.testing.assert_close(policy.logprobs(rollout) * rollout.mask, full * rollout.mask,
                                       atol=1e-5, rtol=0)
    assert full.shape == rollout.mask.shape
    assert policy.logprobs(rollout, torch.tensor([], dtype=torch.long)).shape == (0, rollout.mask.shape[1])


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_shared_image_features_give_the_same_logprobs_and_grads(tiny_qwen_dir: str, freeze_vision: bool) -> None:
    """One vision pass per distinct image (the default when unsharded) equals one pass per row."""
    policy = make_policy(tiny_qwen_dir, freeze_vision=freeze_vision, prefill_once=False)
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES), 3, 1.0)
    results = []
    for sharded in (True, False):  # a sharded model takes per-row vision passes
        policy.sharding = Sharding(sharded=sharded)
        policy.zero_grad()
        logps = policy.logprobs(rollout)
        (logps * rollout.mask).sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (shared, shared_grads) = results
    torch.testing.assert_close(shared * rollout.mask, plain * rollout.mask, atol=1e-5, rtol=0)
    assert plain_grads.keys() == shared_grads.keys() and len(plain_grads) > 0
    for name in plain_grads:
        torch.testing.assert_close(shared_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_gradients_reach_trainable_parameters_only(tiny_qwen_dir: str) -> None:
    policy = make_policy(tiny_qwen_dir)
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES[:2]), 2, 1.0)
    (policy.logprobs(rollout) * rollout.mask).sum().backward()
    visual = vision_tower(policy.model)
    assert all(not p.requires_grad and p.grad is None for p in visual.parameters())
    text = [p for n, p in policy.model.named_parameters() if "language_model" in n]
    assert text and all(p.requires_grad for p in text) and any(p.grad.abs().sum() > 0 for p in text)

    unfrozen = make_policy(tiny_qwen_dir, freeze_vision=False)
    (unfrozen.logprobs(rollout) * rollout.mask).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision_tower(unfrozen.model).parameters())


def test_lora_trains_adapters_only_and_never_in_the_vision_tower(tiny_qwen_dir: str) -> None:
    policy = make_policy(tiny_qwen_dir, lora_r=4, lora_target_modules=["q_proj", "v_proj", "gate_proj", "qkv"])
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)  # vision MLP also has gate_proj, and qkv is vision-only
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES[:2]), 2, 1.0)
    (policy.logprobs(rollout) * rollout.mask).sum().backward()
    grads = {n: p.grad for n, p in policy.model.named_parameters() if p.grad is not None}
    assert set(grads) <= trainable and any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)

    unfrozen = make_policy(tiny_qwen_dir, lora_r=4, lora_target_modules=["qkv"], freeze_vision=False)
    assert any("visual" in n for n, p in unfrozen.model.named_parameters() if p.requires_grad)


def test_a_peft_lora_config_is_used_as_given(tiny_qwen_dir: str) -> None:
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, use_rslora=True, target_modules=["q_proj", "v_proj", "qkv"],
                        modules_to_save=["lm_head"])
    policy = make_policy(tiny_qwen_dir, lora=config)
    used = policy.model.peft_config["default"]
    assert used.use_dora and used.use_rslora and used.r == 4 and config.exclude_modules is None  # ours is a copy
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert any("lora_magnitude_vector" in n for n in trainable)  # DoRA
    assert any("modules_to_save" in n and "lm_head" in n for n in trainable)
    assert not any("visual" in n for n in trainable)  # freeze_vision still keeps adapters out of the tower
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES[:1]), 2, 1.0)
    (policy.logprobs(rollout) * rollout.mask).sum().backward()
    grads = {n for n, p in policy.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_magnitude_vector" in n for n in grads) and any("modules_to_save" in n for n in grads)


def test_lora_config_conflicts_are_named(tiny_qwen_dir: str) -> None:
    from peft import LoraConfig

    with pytest.raises(ValueError, match="either lora .* or lora_r > 0"):
        QwenVLPolicy(tiny_qwen_dir, lora=LoraConfig(r=4), lora_r=8)
    with pytest.raises(ValueError, match="exclude_modules is set .* freeze_vision=False"):
        QwenVLPolicy(tiny_qwen_dir, lora=LoraConfig(r=4, exclude_modules=["lm_head"]))
    QwenVLPolicy(tiny_qwen_dir, lora=LoraConfig(r=4, exclude_modules=["lm_head"]), freeze_vision=False)
    QwenVLPolicy(tiny_qwen_dir, lora=LoraConfig(r=4), quantization="4bit")  # QLoRA through the config


def test_gradient_checkpointing_gives_the_same_logprobs_and_grads(tiny_qwen_dir: str) -> None:
    plain = make_policy(tiny_qwen_dir, lora_r=4, lora_dropout=0.0)
    ckpt = make_policy(tiny_qwen_dir, lora_r=4, lora_dropout=0.0, gradient_checkpointing=True)
    ckpt.model.load_state_dict(plain.model.state_dict())
    torch.manual_seed(0)
    rollout = plain.sample(make_records(*SIZES[:2]), 2, 1.0)
    a, b = plain.logprobs(rollout), ckpt.logprobs(rollout)
    torch.testing.assert_close(a * rollout.mask, b * rollout.mask, atol=1e-5, rtol=0)
    (a * rollout.mask).sum().backward()
    (b * rollout.mask).sum().backward()
    grads = [(p.grad, q.grad) for p, q in zip(plain.trainable_parameters(), ckpt.trainable_parameters())]
    assert grads and all(torch.allclose(g, h, atol=1e-5) for g, h in grads)


# ---------------------------------------------------------------- reference
def test_lora_reference_is_the_adapter_free_model(tiny_qwen_dir: str) -> None:
    policy = make_policy(tiny_qwen_dir, lora_r=4, lora_dropout=0.0)
    policy.enable_reference()
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES[:2]), 3, 0.9)
    ref = policy.logprobs(rollout, reference=True)
    assert not ref.requires_grad
    logps = policy.logprobs(rollout)
    torch.testing.assert_close(logps.detach() * rollout.mask, ref * rollout.mask, atol=1e-6, rtol=0)
    one_step(policy, -(logps * rollout.mask).sum() / rollout.mask.sum(), lr=0.5)
    with torch.no_grad():
        after = policy.logprobs(rollout)
    assert masked_max_diff(after, ref, rollout.mask) > 1e-3
    torch.testing.assert_close(policy.logprobs(rollout, reference=True), ref, atol=1e-6, rtol=0)


def test_full_model_reference_is_a_frozen_copy_made_only_on_request(tiny_qwen_dir: str) -> None:
    policy = make_policy(tiny_qwen_dir)
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES[:2]), 2, 0.9)
    with pytest.raises(RuntimeError, match="enable_reference"):
        policy.logprobs(rollout, reference=True)
    params_before = sum(p.numel() for p in policy.parameters())
    policy.enable_reference()
    assert sum(p.numel() for p in policy.parameters()) == params_before  # not a registered submodule
    assert not any(k.startswith("_reference") for k in policy.state_dict())
    ref = policy.logprobs(rollout, reference=True)
    logps = policy.logprobs(rollout)
    torch.testing.assert_close(logps.detach() * rollout.mask, ref * rollout.mask, atol=1e-6, rtol=0)
    one_step(policy, -(logps * rollout.mask).sum() / rollout.mask.sum())
    with torch.no_grad():
        assert masked_max_diff(policy.logprobs(rollout), ref, rollout.mask) > 1e-3
    torch.testing.assert_close(policy.logprobs(rollout, reference=True), ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- rejection
def test_too_long_prompts_are_rejected_not_truncated(tiny_qwen_short_dir: str) -> None:
    policy = make_policy(tiny_qwen_short_dir, max_new_tokens=16)
    assert policy.context_length == SHORT_CONTEXT
    batch = make_records((64, 48), (224, 224), (32, 32))
    torch.manual_seed(0)
    rollout = policy.sample(batch, 2, 1.0)
    assert rollout.kept == [0, 2] and set(rollout.rejected) == {1}
    geometry = ImageGeometry.from_size(224, 224, max_pixels=MAX_PIXELS)
    text_tokens = len(policy.processor.tokenizer(policy.prompt_text(batch[1]))["input_ids"])
    prompt_tokens = text_tokens - 1 + (geometry.resized_width // 28) * (geometry.resized_height // 28)
    assert rollout.rejected[1] == (
        f"record 'rec-1': prompt of {prompt_tokens} tokens + 16 completion tokens = {prompt_tokens + 16} exceeds "
        f"the model context of {SHORT_CONTEXT} (text_config.max_position_embeddings); rejected, since "
        "truncating would cut image tokens")
    assert rollout.num_rows == 4 and rollout.state.prompts["input_ids"].shape[0] == 2
    assert policy.logprobs(rollout).shape == rollout.mask.shape  # image tokens intact: the forward runs

    empty = policy.sample(batch[1:2], 2, 1.0)
    assert empty.num_rows == 0 and empty.kept == [] and set(empty.rejected) == {0}
    assert policy.logprobs(empty).shape[0] == 0

    with pytest.warns(UserWarning, match="rec-1"):
        texts, boxes = policy.predict(batch)
    assert texts[1] == "" and torch.isnan(boxes[1]).all() and len(texts) == 3


def test_sft_skips_records_too_long_for_prompt_plus_answer(tiny_qwen_short_dir: str) -> None:
    policy = make_policy(tiny_qwen_short_dir)
    batch = make_records((64, 48), (224, 224))
    with pytest.warns(UserWarning, match="rec-1"):
        loss = policy.sft_loss(batch)
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.warns(UserWarning):
        assert policy.sft_loss(batch[1:]).item() == 0.0


# ---------------------------------------------------------------- SFT and export
def _sft_train(policy: QwenVLPolicy, batch, steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = policy.sft_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_sft_loss_is_answer_cross_entropy(policy: QwenVLPolicy) -> None:
    record = make_record(0, 64, 48)
    enc = policy.encode([record])
    answer = format_answer(enc.geometries[0].to_model(record["bbox"]), label=policy.answer_label)
    tok = policy.processor.tokenizer
    ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    full = torch.cat([enc.prompts["input_ids"][0], torch.tensor(ids)])[None]
    labels = full.clone()
    labels[:, :enc.prompts["input_ids"].shape[1]] = -100  # prompt and image tokens do not count
    mm = torch.cat([enc.prompts["mm_token_type_ids"][0], torch.zeros(len(ids), dtype=torch.long)])[None]
    with torch.no_grad():
        expected = policy.model(input_ids=full, attention_mask=torch.ones_like(full), mm_token_type_ids=mm,
                                pixel_values=enc.prompts["pixel_values"],
                                image_grid_thw=enc.prompts["image_grid_thw"], labels=labels).loss
        torch.testing.assert_close(policy.sft_loss([record]), expected, atol=1e-5, rtol=0)


def test_sft_learns_the_box_and_export_reloads_it(tiny_qwen_dir: str, tmp_path) -> None:
    policy = make_policy(tiny_qwen_dir, max_new_tokens=40)
    record = make_record(0, 64, 48)
    torch.manual_seed(0)
    losses = _sft_train(policy, [record], steps=80)  # 45 was enough on some CPUs, not on all
    assert losses[-1] < 0.2 * losses[0] and losses[19] < losses[0] - 1.0
    texts, boxes = policy.predict([record])
    geometry = policy.encode([record]).geometries[0]
    expected = torch.tensor(geometry.to_original([round(v) for v in geometry.to_model(record["bbox"])]))
    assert '"bbox_2d"' in texts[0]
    torch.testing.assert_close(boxes[0], expected.float())  # resized-pixel answer mapped back exactly

    policy.export(str(tmp_path / "full"))
    reloaded = make_policy(str(tmp_path / "full"), max_new_tokens=40)
    texts2, boxes2 = reloaded.predict([record])
    assert texts2 == texts and torch.equal(boxes2, boxes)


def test_lora_export_reloads_as_adapter_and_merged(tiny_qwen_dir: str, tmp_path) -> None:
    policy = make_policy(tiny_qwen_dir, lora_r=8, lora_dropout=0.0, max_new_tokens=16)
    batch = make_records(*SIZES[:2])
    torch.manual_seed(0)
    _sft_train(policy, batch, steps=3, lr=5e-2)
    texts, boxes = policy.predict(batch)
    policy.export(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    adapter = make_policy(str(tmp_path / "adapter"), max_new_tokens=16)
    assert adapter.uses_adapter
    assert adapter.predict(batch)[0] == texts

    policy.export(str(tmp_path / "merged"), merge_adapter=True)
    merged = make_policy(str(tmp_path / "merged"), max_new_tokens=16)
    assert not merged.uses_adapter
    assert merged.predict(batch)[0] == texts
    assert policy.uses_adapter  # merging worked on a copy


def test_predict_in_eval_mode_restores_modes(policy: QwenVLPolicy) -> None:
    policy.eval()
    try:
        texts, boxes = policy.predict(make_records(*SIZES))
        assert not any(m.training for m in policy.model.modules())
    finally:
        policy.train()
    assert len(texts) == 3 and boxes.shape == (3, 4)
    assert all(m.training for m in policy.model.modules())


def test_tiny_model_name_builds_the_offline_model(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medloc_lightning.policies.qwen.tiny import CACHE_ENV, TINY_QWEN_NAME

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    policy = QwenVLPolicy(TINY_QWEN_NAME, max_pixels=MAX_PIXELS)
    assert policy.model_name_or_path.startswith(str(tmp_path))
    policy.configure()
    assert policy.context_length == 2048


def test_constructor_is_cli_friendly() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(QwenVLPolicy, "policy")
    cfg = parser.parse_args(["--policy.model_name_or_path", "x", "--policy.lora_target_modules", '["q_proj"]',
                             "--policy.quantization", "4bit", "--policy.top_k", "5"])
    assert cfg.policy.lora_target_modules == ["q_proj"] and cfg.policy.quantization == "4bit"
    assert cfg.policy.top_k == 5 and cfg.policy.max_pixels == 12845056
    cfg = parser.parse_args(["--policy.model_name_or_path", "x",
                             "--policy.lora", '{"r": 8, "use_dora": true, "modules_to_save": ["lm_head"]}'])
    assert cfg.policy.lora.class_path == "peft.LoraConfig" and cfg.policy.lora.init_args.use_dora
    for bad, expected in (("--policy.quantization=3bit", "4bit"), ("--policy.dtype=fp8", "bfloat16"),
                          ("--policy.lora={\"r\": 8, \"use_dorra\": true}", "use_dorra")):
        with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
            parser.parse_args(["--policy.model_name_or_path", "x", bad])
        assert expected in err.getvalue()
