"""Prefill once per prompt (`qwen_prefill`): the same samples and log-probs as transformers' plain path.

Every comparison runs both paths on one policy and switches only ``prefill_once``; call counters make sure
the shared path really ran where it should (and did not where it must not).
"""
from __future__ import annotations

import pytest
import torch
from qwen_helpers import logit_bias, make_records

from medloc_lightning.policies.qwen import prefill as qwen_prefill
from medloc_lightning.policies.base import Sharding
from medloc_lightning.policies.qwen import QwenVLPolicy
from medloc_lightning.policies.qwen.batch import append_completions, completion_mask, select_prompts
from medloc_lightning.policies.qwen.model import train_mode_without_dropout

SIZES = ((64, 48), (40, 90), (32, 32), (84, 84))  # different image-token counts: left padding differs per row


def make_policy(path: str, **kwargs) -> QwenVLPolicy:
    kwargs.setdefault("max_pixels", 224 * 224)
    kwargs.setdefault("max_new_tokens", 10)
    policy = QwenVLPolicy(path, **kwargs)
    policy.configure()
    if policy.uses_adapter:  # non-zero adapters, so LoRA changes the outputs
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    return policy


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the policy entered the shared-prefill generation and scoring paths."""
    import medloc_lightning.policies.qwen.policy as qwen

    counts = {"generate": 0, "score": 0}
    for name, key in (("generate_with_shared_prefill", "generate"), ("score_with_shared_prefill", "score")):
        original = getattr(qwen, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(qwen, name, counted)
    return counts


def sample_both_ways(policy: QwenVLPolicy, batch, group: int, temperature: float, seed: int):
    """Sequences and per-step logits of generate, plain then prefilled once, from the same seed."""
    enc = policy.encode(batch, policy.max_new_tokens)
    config = policy.generation_config(do_sample=True, temperature=temperature, num_return_sequences=group)
    config.output_logits, config.return_dict_in_generate = True, True
    out = []
    for shared in (False, True):
        torch.manual_seed(seed)
        with torch.no_grad(), train_mode_without_dropout(policy.model):
            if shared:
                result = qwen_prefill.generate_with_shared_prefill(policy.model, enc.prompts, config)
            else:
                result = policy.model.generate(**enc.prompts, generation_config=config)
        out.append((result.sequences, torch.stack(result.logits, 1)))
    return enc, out


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_same_seed_gives_the_same_samples_and_step_logits(tiny_qwen_dir: str, lora: bool) -> None:
    policy = make_policy(tiny_qwen_dir, lora_r=4 if lora else 0)
    eos = policy.eos_token_ids[0]
    with logit_bias(policy.model, {eos: 3.0}):  # completions of different lengths
        enc, ((plain_ids, plain_logits), (shared_ids, shared_logits)) = sample_both_ways(
            policy, make_records(*SIZES), group=3, temperature=0.8, seed=1)
    lengths = enc.prompts["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # left padding really differs between prompts
    assert torch.equal(shared_ids, plain_ids)
    prompt_length = enc.prompts["input_ids"].shape[1]
    mask, _ = completion_mask(plain_ids[:, prompt_length:], policy.eos_token_ids)
    assert 0 < mask.sum(1).min() < mask.sum(1).max()
    # Every step's distribution (the logits each sample was drawn from) agrees to float rounding.
    diff = (shared_logits - plain_logits).abs().amax(-1)[mask.bool()]
    assert diff.max().item() < 1e-4


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sample_is_the_same_with_and_without_prefill_once(tiny_qwen_dir: str, lora: bool, calls) -> None:
    policy = make_policy(tiny_qwen_dir, lora_r=4 if lora else 0)
    rollouts = []
    for prefill_once in (False, True):
        policy.prefill_once = prefill_once
        torch.manual_seed(7)
        rollouts.append(policy.sample(make_records(*SIZES), 4, 1.0))
    assert calls["generate"] == 1
    assert torch.equal(rollouts[0].state.completion_ids, rollouts[1].state.completion_ids)
    assert rollouts[0].texts == rollouts[1].texts


def logprobs_both_ways(policy: QwenVLPolicy, rollout, rows=None, reference: bool = False, grad: bool = False):
    out = []
    for prefill_once in (False, True):
        policy.prefill_once = prefill_once
        policy.zero_grad()
        with torch.set_grad_enabled(grad):
            logps = policy.logprobs(rollout, rows, reference=reference)
        grads = {}
        if grad:
            (logps * rollout.mask[rows if rows is not None else slice(None)]).sum().backward()
            grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        out.append((logps.detach(), grads))
    return out


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_policy_and_reference_logprobs_are_the_same_both_ways(tiny_qwen_dir: str, lora: bool, calls) -> None:
    policy = make_policy(tiny_qwen_dir, lora_r=4 if lora else 0, lora_dropout=0.0)
    policy.enable_reference()
    eos = policy.eos_token_ids[0]
    torch.manual_seed(3)
    with logit_bias(policy.model, {eos: 3.0}):
        rollout = policy.sample(make_records(*SIZES), 3, 0.9)
    rows = torch.tensor([11, 0, 5, 5, 3])  # any subset, repeats allowed, prompts out of order
    for kwargs in ({}, {"rows": rows}, {"reference": True}, {"rows": rows, "reference": True}):
        before = calls["score"]
        (plain, _), (shared, _) = logprobs_both_ways(policy, rollout, **kwargs)
        assert calls["score"] == before + 1
        mask = rollout.mask[kwargs.get("rows", slice(None))]
        torch.testing.assert_close(shared * mask, plain * mask, atol=1e-5, rtol=0)
    # The reference really is another model once the policy moved.
    with torch.no_grad():
        for param in policy.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
    (plain_ref, _), (shared_ref, _) = logprobs_both_ways(policy, rollout, reference=True)
    (plain_new, _), _ = logprobs_both_ways(policy, rollout)
    torch.testing.assert_close(shared_ref * rollout.mask, plain_ref * rollout.mask, atol=1e-5, rtol=0)
    assert ((plain_new - plain_ref) * rollout.mask).abs().max() > 1e-3


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradients_are_the_same_both_ways(tiny_qwen_dir: str, lora: bool, calls) -> None:
    policy = make_policy(tiny_qwen_dir, lora_r=4 if lora else 0, lora_dropout=0.0, freeze_vision=lora)
    torch.manual_seed(4)
    rollout = policy.sample(make_records(*SIZES[:3]), 3, 1.0)
    (plain, plain_grads), (shared, shared_grads) = logprobs_both_ways(policy, rollout, grad=True)
    assert calls["score"] == 1
    torch.testing.assert_close(shared * rollout.mask, plain * rollout.mask, atol=1e-5, rtol=0)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    assert lora or any("visual" in name for name in plain_grads)  # full fine-tune: through the vision tower too
    for name, expected in plain_grads.items():  # equal up to summation order, relative to each tensor's scale
        scale = expected.abs().max().item()
        assert scale > 0 and (shared_grads[name] - expected).abs().max().item() <= 1e-5 * scale, name


@pytest.mark.parametrize("kwargs", [{"gradient_checkpointing": True}, {"lora_r": 4, "lora_dropout": 0.1}],
                         ids=["checkpointing", "lora-dropout"])
def test_gradient_passes_keep_the_plain_path_where_a_cache_would_differ(tiny_qwen_dir: str, kwargs, calls) -> None:
    policy = make_policy(tiny_qwen_dir, **kwargs)
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES[:2]), 2, 1.0)
    assert calls["generate"] == 1
    assert not qwen_prefill.caches_through_backward(policy.model)
    policy.logprobs(rollout)
    assert calls["score"] == 0
    with torch.no_grad():  # no backward, no dropout: the shared path is exact again
        policy.logprobs(rollout)
    assert calls["score"] == 1


def test_sharded_models_and_single_rows_take_the_plain_path(tiny_qwen_dir: str, calls) -> None:
    policy = make_policy(tiny_qwen_dir)
    torch.manual_seed(0)
    batch = make_records(*SIZES[:2])
    policy.predict(batch)  # one row per prompt: nothing to share
    assert calls == {"generate": 0, "score": 0}
    policy.configure(Sharding(sharded=True))
    rollout = policy.sample(batch, 2, 1.0)
    with torch.no_grad():
        policy.logprobs(rollout)
    assert calls == {"generate": 0, "score": 0}
    policy.configure(Sharding())
    with torch.no_grad():
        policy.logprobs(rollout)
    assert calls == {"generate": 0, "score": 1}


def test_completion_positions_are_qwens_mrope_positions(tiny_qwen_dir: str) -> None:
    """`text_positions` + the prompt's delta equal ``get_rope_index`` over prompt + completion."""
    policy = make_policy(tiny_qwen_dir)
    enc = policy.encode(make_records(*SIZES))
    prompts = enc.prompts
    group, length = 2, 6
    ids = torch.randint(20, 200, (len(SIZES) * group, length))
    mask = torch.ones(ids.shape)
    mask[1, 3:] = 0  # an early EOS: later tokens are not attended
    index = [i // group for i in range(ids.shape[0])]
    full = append_completions(select_prompts(prompts, index), ids, mask)
    expected, _ = qwen_prefill.rope_index(policy.model, full)
    prompt_positions, deltas = qwen_prefill.rope_index(policy.model, prompts)
    torch.testing.assert_close(prompt_positions, expected[..., :prompts["input_ids"].shape[1]][:, ::group])
    got = qwen_prefill.text_positions(full["attention_mask"], deltas[index], prompts["input_ids"].shape[1])
    keep = mask.bool()
    assert torch.equal(got[:, keep], expected[..., prompts["input_ids"].shape[1]:][:, keep])
    assert (deltas != 0).all()  # the image really shifts the text positions


def test_reference_copy_can_be_kept_in_bfloat16(tiny_qwen_dir: str) -> None:
    """``reference_dtype`` sets the frozen copy's dtype only; its log-probs stay those of the start weights."""
    policy = make_policy(tiny_qwen_dir, reference_dtype="bfloat16")
    exact = make_policy(tiny_qwen_dir)
    torch.manual_seed(0)
    rollout = policy.sample(make_records(*SIZES[:2]), 2, 1.0)
    policy.enable_reference()
    exact.enable_reference()
    assert {p.dtype for p in policy._reference_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32}
    assert {p.dtype for p in exact._reference_model.parameters()} == {torch.float32}
    half, full = policy.logprobs(rollout, reference=True), exact.logprobs(rollout, reference=True)
    assert half.dtype == torch.float32
    diff = ((half - full) * rollout.mask).abs().max().item()
    assert 0 < diff < 0.1  # bf16 rounding of the same weights, not another model
    with pytest.raises(ValueError, match="dtype"):
        QwenVLPolicy(tiny_qwen_dir, reference_dtype="float8")
