"""GRPO maths: advantages and the clipped loss against hand-computed numbers, invariances, and TRL parity."""
from __future__ import annotations

import collections
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_lightning.grpo import LOG_RATIO_LIMIT, group_advantages, grpo_loss, zero_std_groups

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
OLD = -1.0  # old log-prob of every token in the hand example; logps = OLD + log(rho)


def hand_batch(pad_value: float = float("nan")):
    """Two completions, three token slots; row 0's last slot is padding.

    Ratios rho: row 0 (A=+1): 1.5, 0.9, pad;  row 1 (A=-2): 0.5, 1.5, 1.0.
    """
    rhos = [[1.5, 0.9, None], [0.5, 1.5, 1.0]]
    logps = torch.tensor(
        [[OLD + math.log(r) if r is not None else pad_value for r in row] for row in rhos], dtype=torch.float64
    )
    old = torch.full_like(logps, OLD)
    old[0, 2] = pad_value
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return logps.requires_grad_(), old, advantages, mask


# Per-token losses worked out by hand with epsilon = 0.2 (band [0.8, 1.2]), loss = -min(rho*A, clip(rho)*A):
#   row 0, A=+1: rho 1.5 -> -min(1.5, 1.2) = -1.2 (high-clipped);  rho 0.9 -> -0.9
#   row 1, A=-2: rho 0.5 -> -min(-1.0, -1.6) = 1.6 (low-clipped);  rho 1.5 -> -min(-3.0, -2.4) = 3.0 (not
#   clipped: a high ratio with a negative advantage keeps the unclipped term);  rho 1.0 -> 2.0
ROW0 = [-1.2, -0.9]
ROW1 = [1.6, 3.0, 2.0]


def test_grpo_hand_values():
    loss, _ = grpo_loss(*hand_batch(), loss_type="grpo")
    expected = (sum(ROW0) / 2 + sum(ROW1) / 3) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.575)


def test_bnpo_hand_values():
    loss, _ = grpo_loss(*hand_batch(), loss_type="bnpo")
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 5, abs=1e-12)


def test_dr_grpo_hand_values():
    loss, _ = grpo_loss(*hand_batch(), loss_type="dr_grpo", max_completion_length=4)
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / (2 * 4), abs=1e-12)


def test_dapo_hand_values_local_and_global_token_count():
    local, _ = grpo_loss(*hand_batch(), loss_type="dapo")
    bnpo, _ = grpo_loss(*hand_batch(), loss_type="bnpo")
    assert local.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 5, abs=1e-12)
    assert local.item() == pytest.approx(bnpo.item(), abs=1e-15)
    # 10 tokens in the whole generation batch (e.g. another micro-batch or rank holds 5 more).
    glob, _ = grpo_loss(*hand_batch(), loss_type="dapo", total_tokens=10)
    assert glob.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 10, abs=1e-12)
    as_tensor, _ = grpo_loss(*hand_batch(), loss_type="dapo", total_tokens=torch.tensor(10))
    assert as_tensor.item() == pytest.approx(glob.item(), abs=1e-15)


def test_clip_stats_hand_values():
    _, stats = grpo_loss(*hand_batch(), loss_type="bnpo")
    # 5 real tokens: one low-clipped (row 1, rho 0.5, A<0), one high-clipped (row 0, rho 1.5, A>0).
    assert stats["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)
    assert stats["clip_ratio/high_mean"].item() == pytest.approx(1 / 5)
    assert stats["clip_ratio/region_mean"].item() == pytest.approx(2 / 5)
    assert "kl" not in stats
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_epsilon_high_widens_only_the_upper_band():
    loss, stats = grpo_loss(*hand_batch(), loss_type="bnpo", epsilon_high=0.6)
    # Band [0.8, 1.6]: row 0's rho 1.5 is now inside, so its loss is -1.5 instead of -1.2.
    assert loss.item() == pytest.approx((-1.5 - 0.9 + sum(ROW1)) / 5, abs=1e-12)
    assert stats["clip_ratio/high_mean"].item() == 0.0
    assert stats["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)


def test_clipped_tokens_carry_no_gradient():
    logps, old, adv, mask = hand_batch()
    loss, _ = grpo_loss(logps, old, adv, mask, loss_type="bnpo")
    loss.backward()
    g = logps.grad
    # d/dlogp of -rho*A is -rho*A; clipped tokens (row 0 slot 0, row 1 slot 0) are constant.
    assert g[0, 0].item() == 0.0 and g[1, 0].item() == 0.0
    assert g[0, 1].item() == pytest.approx(-0.9 * 1.0 / 5)
    assert g[1, 1].item() == pytest.approx(-1.5 * -2.0 / 5)
    assert g[1, 2].item() == pytest.approx(-1.0 * -2.0 / 5)
    assert g[0, 2].item() == 0.0  # padding


def test_kl_value_and_gradient_sign():
    # On-policy (rho = 1) with zero advantages: only the KL term is left.
    gaps = [math.log(2.0), 0.0, -0.5]  # ref - logp per token
    logps = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    ref = logps.detach() + torch.tensor([gaps], dtype=torch.float64)
    mask = torch.ones(1, 3)
    beta = 0.5
    loss, stats = grpo_loss(
        logps, logps.detach(), torch.zeros(1, dtype=torch.float64), mask, ref_logps=ref, beta=beta, loss_type="bnpo"
    )
    k3 = [math.exp(d) - d - 1 for d in gaps]  # [1 - ln 2, 0, e^-0.5 - 0.5]
    assert stats["kl"].item() == pytest.approx(sum(k3) / 3)
    assert loss.item() == pytest.approx(beta * sum(k3) / 3)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): descent pulls logp toward ref.
    expected = [beta * (1 - math.exp(d)) / 3 for d in gaps]
    assert logps.grad[0].tolist() == pytest.approx(expected)
    assert logps.grad[0, 0] < 0 and logps.grad[0, 1] == 0 and logps.grad[0, 2] > 0


def test_kl_adds_to_policy_loss_per_token():
    logps, old, adv, mask = hand_batch()
    ref = logps.detach().clone()
    ref[1, 2] += math.log(3.0)  # one real token differs from the reference
    ref[0, 2] = float("inf")  # padding: ignored
    loss, stats = grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.1, loss_type="grpo")
    k3 = 3.0 - math.log(3.0) - 1
    expected = (sum(ROW0) / 2 + (sum(ROW1) + 0.1 * k3) / 3) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["kl"].item() == pytest.approx(k3 / 5)


@pytest.mark.parametrize("pad", [float("nan"), float("inf"), -float("inf"), 1e6])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_padding_values_are_ignored(pad, loss_type):
    kw = {"loss_type": loss_type, "max_completion_length": 4}
    clean, _ = grpo_loss(*hand_batch(pad_value=-3.0), **kw)
    logps, old, adv, mask = hand_batch(pad_value=pad)
    ref = logps.detach().clone()
    loss, stats = grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.05, **kw)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(clean.item(), abs=1e-12)
    loss.backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[0, 2].item() == 0.0
    assert all(torch.isfinite(v) for v in stats.values())


def test_fully_masked_row_counts_as_a_sequence_for_grpo_only():
    logps, old, adv, mask = hand_batch(pad_value=0.0)
    mask = mask.clone()
    mask[1] = 0  # row 1 is all padding: only row 0's tokens remain
    grpo, _ = grpo_loss(logps, old, adv, mask, loss_type="grpo")
    assert grpo.item() == pytest.approx((sum(ROW0) / 2 + 0.0) / 2)  # row 1 contributes 0 but still counts
    bnpo, _ = grpo_loss(logps, old, adv, mask, loss_type="bnpo")
    assert bnpo.item() == pytest.approx(sum(ROW0) / 2)
    dr, _ = grpo_loss(logps, old, adv, mask, loss_type="dr_grpo", max_completion_length=3)
    assert dr.item() == pytest.approx(sum(ROW0) / (2 * 3))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_everything_masked_gives_zero_not_nan(loss_type):
    logps = torch.randn(3, 4, requires_grad=True)
    loss, stats = grpo_loss(
        logps, logps.detach() + 1, torch.ones(3), torch.zeros(3, 4, dtype=torch.bool),
        loss_type=loss_type, max_completion_length=4,
    )
    assert loss.item() == 0.0
    loss.backward()
    assert (logps.grad == 0).all()
    assert all(v.item() == 0.0 for v in stats.values())


def test_empty_batch_gives_zero():
    loss, _ = grpo_loss(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0), torch.zeros(0, 5))
    assert loss.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gap", [100.0, -100.0, 1e4, 15.0])
def test_huge_log_ratios_give_a_finite_loss_and_gradient(gap, dtype):
    # a policy far from its sampler (or a diverged reference): exp(100) is inf in fp32 without the clamp
    logps = torch.full((2, 3), -1.0, dtype=dtype, requires_grad=True)
    old = (logps.detach() - gap).to(dtype)
    ref = (logps.detach() + gap).to(dtype)
    for loss_type in LOSS_TYPES:
        loss, stats = grpo_loss(logps, old, torch.tensor([1.0, -1.0]), torch.ones(2, 3), ref_logps=ref, beta=0.04,
                                loss_type=loss_type, max_completion_length=3)
        (grad,) = torch.autograd.grad(loss, logps)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values()), loss_type
        # the gradient comes back in the dtype of logps: fp16 cannot hold exp(15) (the module passes fp32)
        assert torch.isfinite(grad).all() or (dtype == torch.float16 and abs(gap) < LOG_RATIO_LIMIT), loss_type


def random_batch(seed: int, n: int = 7, t: int = 6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(n, t, generator=g, dtype=dtype) * 3).requires_grad_()
    old = logps.detach() + torch.randn(n, t, generator=g, dtype=dtype) * 0.4  # far enough to clip both ways
    ref = logps.detach() + torch.randn(n, t, generator=g, dtype=dtype) * 0.3
    adv = torch.randn(n, generator=g, dtype=dtype)
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t) < lengths[:, None]).to(dtype)
    return logps, old, adv, mask, ref


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_row_chunks_with_shared_totals_sum_to_the_full_loss(loss_type):
    logps, old, adv, mask, ref = random_batch(0)
    kw = dict(beta=0.04, epsilon_high=0.28, loss_type=loss_type, max_completion_length=6)
    full, _ = grpo_loss(logps, old, adv, mask, ref_logps=ref, **kw)
    (full_grad,) = torch.autograd.grad(full, logps)
    totals = dict(total_sequences=logps.shape[0], total_tokens=mask.sum().item())
    parts = [
        grpo_loss(logps[a:b], old[a:b], adv[a:b], mask[a:b], ref_logps=ref[a:b], **kw, **totals)[0]
        for a, b in [(0, 3), (3, 4), (4, 7)]
    ]
    chunked = sum(parts)
    (chunk_grad,) = torch.autograd.grad(chunked, logps)
    assert chunked.item() == pytest.approx(full.item(), abs=1e-12)
    torch.testing.assert_close(chunk_grad, full_grad)


def test_gradients_flow_only_through_logps():
    logps, old, adv, mask, ref = random_batch(1)
    old.requires_grad_()
    ref.requires_grad_()
    adv.requires_grad_()
    loss, _ = grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.1)
    loss.backward()
    assert old.grad is None and ref.grad is None and adv.grad is None
    assert logps.grad is not None and logps.grad.abs().sum() > 0


def test_on_policy_loss_is_minus_mean_advantage_and_bool_float_masks_agree():
    logps, _, adv, mask, _ = random_batch(2)
    loss_f, stats = grpo_loss(logps, logps.detach(), adv, mask, loss_type="grpo")
    loss_b, _ = grpo_loss(logps, logps.detach(), adv, mask.bool(), loss_type="grpo")
    # rho = 1 everywhere: each sequence's token mean is -A_i (0 for empty rows).
    has_tokens = [bool(m.sum() > 0) for m in mask]
    expected = -sum(a for a, keep in zip(adv.tolist(), has_tokens) if keep) / len(has_tokens)
    assert loss_f.item() == pytest.approx(expected, abs=1e-12)
    assert loss_b.item() == loss_f.item()
    assert stats["clip_ratio/region_mean"].item() == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": "ppo"}, "loss_type"),
        ({"loss_type": "dr_grpo"}, "max_completion_length"),
        ({"loss_type": "dr_grpo", "max_completion_length": 0}, "max_completion_length"),
        ({"beta": 0.1}, "ref_logps"),
        ({"beta": -0.1}, "beta"),
        ({"epsilon": -0.2}, "epsilon"),
        ({"epsilon_high": float("nan")}, "epsilon_high"),
        ({"total_sequences": 0}, "total_sequences"),
        ({"loss_type": "dapo", "total_tokens": -1}, "total_tokens"),
        ({"loss_type": "dapo", "total_tokens": torch.ones(2)}, "total_tokens"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    logps, old, adv, mask, _ = random_batch(3)
    with pytest.raises(ValueError, match=match):
        grpo_loss(logps, old, adv, mask, **kwargs)


@pytest.mark.parametrize("bad", ["old_logps", "mask", "ref_logps", "advantages", "logps_1d"])
def test_shape_mismatch_raises(bad):
    logps, old, adv, mask, ref = random_batch(4)
    args = {"logps": logps, "old_logps": old, "advantages": adv, "mask": mask, "ref_logps": ref}
    if bad == "logps_1d":
        args.update(logps=logps[0], old_logps=old[0], mask=mask[0], ref_logps=ref[0], advantages=adv[:1])
        match = "logps"
    else:
        args[bad] = args[bad][:-1]
        match = bad
    with pytest.raises(ValueError, match=match):
        grpo_loss(args["logps"], args["old_logps"], args["advantages"], args["mask"], ref_logps=args["ref_logps"])


# ---------------------------------------------------------------- advantages


def test_group_advantages_hand_values_per_scale():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    group_std = math.sqrt((4 * 0.25) / 3)  # Bessel: deviations +-0.5, n - 1 = 3
    batch_std = math.sqrt((4 * 0.25) / 7)  # batch mean 0.5: four +-0.5, four 0; n - 1 = 7
    signs = [1, -1, -1, 1]
    cases = {"group": 0.5 / (group_std + 1e-4), "batch": 0.5 / (batch_std + 1e-4), "none": 0.5}
    for scale, magnitude in cases.items():
        adv = group_advantages(rewards, scale=scale)
        assert adv[0].tolist() == pytest.approx([s * magnitude for s in signs], abs=1e-12), scale
        assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0], scale


def test_group_advantages_eps():
    rewards = torch.tensor([[2.0, 0.0]], dtype=torch.float64)  # std = sqrt(2)
    for eps in (0.0, 1e-4, 1.0):
        adv = group_advantages(rewards, eps=eps)
        assert adv[0, 0].item() == pytest.approx(1.0 / (math.sqrt(2) + eps))
        assert adv[0, 1].item() == pytest.approx(-1.0 / (math.sqrt(2) + eps))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [0.1, 1 / 3, 0.7, 0.0])
def test_equal_groups_give_exact_zeros(scale, value):
    # Values like 0.1 leave float residue in mean and std; it must not be amplified, even with eps = 0.
    rewards = torch.full((3, 5), value, dtype=torch.float32)
    for eps in (0.0, 1e-4):
        adv = group_advantages(rewards, scale=scale, eps=eps)
        assert (adv == 0).all()
    assert zero_std_groups(rewards).all()


def test_zero_std_groups_and_integer_rewards():
    rewards = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 0]])
    assert zero_std_groups(rewards).tolist() == [True, False, True]
    assert zero_std_groups(torch.tensor([[0.3], [0.4]])).tolist() == [True, True]  # a lone completion
    adv = group_advantages(rewards)
    assert adv.is_floating_point() and adv[0].tolist() == [0, 0, 0] and adv[1, 0] < 0 < adv[1, 1]


@pytest.mark.parametrize(
    "rewards, kwargs, match",
    [
        (torch.ones(4), {}, r"\[B, G\]"),
        (torch.ones(4, 1), {}, "G >= 2"),
        (torch.ones(2, 3), {"scale": "std"}, "scale"),
        (torch.ones(2, 3), {"eps": -1.0}, "eps"),
        (torch.tensor([[0.0, float("nan")]]), {}, "NaN"),
    ],
)
def test_group_advantages_bad_input(rewards, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, **kwargs)


finite = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda b: st.integers(2, 6).flatmap(
            lambda g: st.tuples(
                st.lists(st.lists(finite, min_size=g, max_size=g), min_size=b, max_size=b),
                st.lists(finite, min_size=b, max_size=b),
            )
        )
    ),
    st.sampled_from(["group", "batch", "none"]),
)
def test_group_advantages_properties(data, scale):
    values, shifts = data
    rewards = torch.tensor(values, dtype=torch.float64)
    adv = group_advantages(rewards, scale=scale)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(len(values), dtype=torch.float64), atol=1e-6, rtol=0)
    if scale != "batch":  # a per-group shift leaves group-relative advantages unchanged
        shifted = group_advantages(rewards + torch.tensor(shifts, dtype=torch.float64)[:, None], scale=scale)
        torch.testing.assert_close(shifted, adv, atol=1e-5, rtol=1e-5)
    flat = zero_std_groups(rewards)
    assert (adv[flat] == 0).all()
    # Order within a group is preserved (weakly: rewards closer than float resolution may tie).
    for r_row, a_row in zip(rewards, adv):
        for i in range(r_row.numel()):
            for j in range(r_row.numel()):
                if r_row[i] < r_row[j]:
                    assert a_row[i] <= a_row[j]


# ---------------------------------------------------------------- TRL parity


@pytest.fixture(scope="module")
def trl_trainer_factory():
    """Build a bare ``GRPOTrainer`` (no model, no dataset) whose real ``_compute_loss`` runs on given tensors.

    ``object.__new__`` skips ``__init__``; we set only the attributes ``_compute_loss`` reads (a real
    ``GRPOConfig`` and a real CPU ``Accelerator``) and replace the model forward,
    ``_get_per_token_logps_and_entropies``, with one returning our log-probs. Everything after the forward, i.e.
    ratio, clipping, KL, normalization and the clip metrics, is TRL's own code. ``use_bias_correction_kl`` is set
    to False: TRL 1.16 defaults to multiplying k3 by the ratio (DeepSeek-V3.2), which our loss does not do.
    """
    pytest.importorskip("trl")
    from accelerate import Accelerator
    from trl import GRPOConfig, GRPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(output_dir="unused", report_to=[], bf16=False, use_cpu=True, use_bias_correction_kl=False)
    accelerator = Accelerator(cpu=True)

    def make(logps, loss_type, beta, epsilon, epsilon_high, max_completion_length):
        trainer = object.__new__(GRPOTrainer)
        trainer.args = args
        trainer.accelerator = accelerator
        trainer.model = torch.nn.Linear(1, 1)  # only `.training` is read (train mode)
        trainer.loss_type, trainer.beta = loss_type, beta
        trainer.epsilon_low, trainer.epsilon_high = epsilon, epsilon_high
        trainer.max_completion_length = max_completion_length
        trainer.top_entropy_quantile = 1.0
        trainer.importance_sampling_level = "token"
        trainer.off_policy_mask_threshold = None
        trainer.use_vllm = False
        trainer.vllm_importance_sampling_correction = False
        trainer.aux_loss_enabled = False
        trainer._entropy_bonus_enabled = False
        trainer.current_gradient_accumulation_steps = 1
        trainer._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
        trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
        return trainer

    return make


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_matches_trl_compute_loss(trl_trainer_factory, loss_type, beta):
    logps, old, adv, mask, ref = random_batch(5, n=8, t=9, dtype=torch.float32)
    mask = mask.long()  # TRL's completion_mask is integer
    n_items = torch.tensor(float(mask.sum() * 3))  # the generation batch holds three such micro-batches
    trainer = trl_trainer_factory(logps, loss_type, beta, 0.2, 0.28, 9)
    n, t = logps.shape
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": n_items,
    }
    if beta:
        inputs["ref_per_token_logps"] = ref
    trl_loss = trainer._compute_loss(None, inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, logps)
    trl_stats = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    ours, stats = grpo_loss(
        logps, old, adv, mask, ref_logps=ref if beta else None, beta=beta, epsilon=0.2, epsilon_high=0.28,
        loss_type=loss_type, max_completion_length=9, total_tokens=n_items if loss_type == "dapo" else None,
    )
    (our_grad,) = torch.autograd.grad(ours, logps)
    torch.testing.assert_close(ours, trl_loss.detach())
    torch.testing.assert_close(our_grad, trl_grad)
    assert trl_stats["clip_ratio/low_mean"] > 0 and trl_stats["clip_ratio/high_mean"] > 0  # both clips exercised
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean") + (("kl",) if beta else ()):
        assert stats[key].item() == pytest.approx(trl_stats[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl_formula(scale):
    """TRL computes advantages inline in ``_generate_and_score_completions`` (generation, reward calls and
    gathering in one method), which cannot run without a full trainer and model. This re-derives its
    ``sum_then_normalize`` branch line by line, using TRL's own ``nanstd``, and compares."""
    pytest.importorskip("trl")
    from trl.trainer.utils import nanstd

    g = torch.Generator().manual_seed(6)
    b, n_gen = 5, 4
    rewards = torch.rand(b * n_gen, generator=g).round(decimals=1)
    rewards[:n_gen] = 0.5  # one all-equal group
    mean = torch.nanmean(rewards.view(-1, n_gen), dim=1).repeat_interleave(n_gen)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(rewards.view(-1, n_gen), dim=1).repeat_interleave(n_gen)
    expected = rewards - mean
    if scale != "none":
        expected = expected / (std + 1e-4)
    is_std_zero = torch.isclose(std, torch.zeros_like(std)).view(-1, n_gen)[:, 0]

    ours = group_advantages(rewards.view(b, n_gen), scale=scale)
    torch.testing.assert_close(ours.reshape(-1), expected, atol=1e-5, rtol=1e-5)
    if scale != "batch":
        assert zero_std_groups(rewards.view(b, n_gen)).tolist() == is_std_zero.tolist()
