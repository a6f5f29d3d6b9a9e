"""GRPO maths as pure torch functions: group-relative advantages and the clipped surrogate loss.

Normalizations follow TRL's ``GRPOTrainer`` (``loss_type`` grpo / bnpo / dr_grpo / dapo), so a run here and a
TRL run with the same batch optimise the same objective. No Lightning, no model: tensors in, tensors out.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = ["ADVANTAGE_SCALES", "AdvantageScale", "LOG_RATIO_LIMIT", "LOSS_TYPES", "LossType", "group_advantages",
           "grpo_loss", "loss_stat_keys", "zero_std_groups"]

AdvantageScale = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ADVANTAGE_SCALES: tuple[str, ...] = get_args(AdvantageScale)
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
LOG_RATIO_LIMIT = 20.0
"""Log-ratios are clamped to ±this before ``exp`` (as verl does): exp(20) ≈ 5e8 is finite in the float32 the loss
is computed in, while an unclamped log-ratio above ~88 overflows float32 to inf and turns the loss into inf or NaN."""


def loss_stat_keys(beta: float) -> tuple[str, ...]:
    """The keys of `grpo_loss`'s stats: the same on every call with this ``beta``."""
    keys = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
    return keys + ("kl",) if beta > 0 else keys


def _check_rewards(rewards: Tensor, min_group: int) -> Tensor:
    if not isinstance(rewards, Tensor) or rewards.dim() != 2:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a [B, G] tensor (B prompts x G completions), got {shape}")
    if rewards.shape[1] < min_group:
        raise ValueError(
            f"rewards has groups of G={rewards.shape[1]}; GRPO needs G >= {min_group} completions per prompt"
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contains NaN or infinite values; every completion needs a finite reward")
    return rewards


def zero_std_groups(rewards: Tensor) -> Tensor:
    """Bool [B]: groups whose G rewards are all identical (std exactly 0), i.e. groups with no learning signal.

    Feeds the ``frac_reward_zero_std`` metric. A group of one completion counts as zero-std.
    """
    rewards = _check_rewards(rewards, min_group=1)
    return rewards.amax(dim=1) == rewards.amin(dim=1)


def group_advantages(rewards: Tensor, scale: AdvantageScale = "group", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages [B, G] from rewards [B, G] (TRL's ``scale_rewards``).

    ``group``: (r - group mean) / (group std + eps); ``batch``: same group mean, std over the whole batch;
    ``none``: r - group mean. Stds are Bessel-corrected. Groups with identical rewards get exact zeros, so
    float residue in a "zero" std is never amplified into a spurious advantage.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    rewards = _check_rewards(rewards, min_group=2)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = centred / (rewards.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        advantages = centred / (rewards.std() + eps)
    else:
        advantages = centred
    flat = zero_std_groups(rewards).unsqueeze(1)
    # A zero std with eps=0 divides 0 by 0 only in flat groups, which are overwritten here.
    return torch.where(flat, torch.zeros_like(advantages), advantages)


def _token_count(value: float | Tensor | None, default: Tensor, name: str) -> Tensor | float:
    if value is None:
        return default
    if isinstance(value, Tensor):
        # Values of a tensor are not checked: reading them would force a device sync on every step.
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _check_loss_inputs(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, ref_logps: Tensor | None
) -> None:
    if logps.dim() != 2:
        raise ValueError(f"logps must be [N, T] per-token log-probs, got shape {tuple(logps.shape)}")
    if not logps.is_floating_point():
        raise ValueError(f"logps must be a floating tensor, got {logps.dtype}")
    named = {"old_logps": old_logps, "mask": mask}
    if ref_logps is not None:
        named["ref_logps"] = ref_logps
    for name, tensor in named.items():
        if tuple(tensor.shape) != tuple(logps.shape):
            raise ValueError(f"{name} must have the shape of logps {tuple(logps.shape)}, got {tuple(tensor.shape)}")
    if tuple(advantages.shape) != (logps.shape[0],):
        raise ValueError(
            f"advantages must be [N] = ({logps.shape[0]},), one per completion, got {tuple(advantages.shape)}"
        )


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logps: Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: LossType = "grpo",
    max_completion_length: int | None = None,
    total_sequences: float | None = None,
    total_tokens: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped GRPO surrogate (+ beta * k3 KL) over per-token log-probs [N, T], advantages [N].

    Per token: -min(rho*A, clip(rho, 1-epsilon, 1+epsilon_high)*A) + beta*k3, rho = exp(logps - old_logps),
    k3 = exp(ref - logps) - (ref - logps) - 1. Aggregation by ``loss_type`` (as TRL):

    - ``grpo``: mean over sequences of each sequence's token mean (per-sequence denominators clamp at 1);
    - ``bnpo``: token mean over the batch (denominator clamps at 1);
    - ``dr_grpo``: token sum / (N * max_completion_length);
    - ``dapo``: token sum / tokens in the whole generation batch (``total_tokens``; defaults to the local count,
      which equals ``bnpo`` in one process without accumulation).

    ``total_sequences`` replaces N (grpo, dr_grpo) and ``total_tokens`` replaces the mask sum (bnpo, dapo); each
    is ignored by the other types. Summing the losses of disjoint row chunks, each called with the same totals,
    equals one call on all rows. Under DDP, which averages gradients over P ranks, pass global totals / P (as TRL
    does for dapo); division by gradient-accumulation steps is left to the caller.

    The maths runs in at least float32 whatever the dtype of ``logps`` (fp16 cannot hold exp(20)).
    Padding (mask 0) never reaches the maths, so its log-probs may hold anything, NaN and -inf included.
    Log-ratios (policy vs old, reference vs policy) are clamped to ±:data:`LOG_RATIO_LIMIT` before ``exp``, so a
    policy that drifted far from the sampler gives a large finite loss, never inf; beyond the clamp the token
    carries no gradient.
    Returns ``(loss, stats)``; stats are detached scalars over the local mask: ``clip_ratio/low_mean`` (rho <
    1-epsilon with A < 0), ``clip_ratio/high_mean`` (rho > 1+epsilon_high with A > 0), ``clip_ratio/region_mean``
    (either), and ``kl`` (masked mean k3) only when beta > 0 (`loss_stat_keys`).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    for name, value in (("epsilon", epsilon), ("epsilon_high", epsilon_high), ("beta", beta)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if beta > 0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps (the reference model's per-token log-probs)")
    if loss_type == "dr_grpo" and (
        max_completion_length is None or isinstance(max_completion_length, bool) or max_completion_length < 1
    ):
        raise ValueError(f"loss_type='dr_grpo' needs max_completion_length >= 1, got {max_completion_length!r}")
    if total_sequences is not None and not (
        isinstance(total_sequences, (int, float))
        and not isinstance(total_sequences, bool)
        and math.isfinite(total_sequences)
        and total_sequences > 0
    ):
        raise ValueError(f"total_sequences must be a number > 0, got {total_sequences!r}")
    _check_loss_inputs(logps, old_logps, advantages, mask, ref_logps)

    # Gradients flow through logps only: old/ref log-probs and advantages are constants of the update.
    logps = logps.to(torch.promote_types(logps.dtype, torch.float32))  # fp16/bf16 -> fp32; fp64 stays
    old_logps = old_logps.detach()
    ref_logps = None if ref_logps is None else ref_logps.detach()
    advantages = advantages.detach()
    keep = mask != 0
    weight = mask.to(logps.dtype)
    zero = torch.zeros((), dtype=logps.dtype, device=logps.device)
    # Masked positions get a log-ratio of 0 (rho = 1, k3 = 0) so padding values, even NaN, stay out of values
    # and gradients.
    log_ratio = torch.where(keep, logps - old_logps, zero).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    kl = None
    if beta > 0:
        ref_gap = torch.where(keep, ref_logps.to(logps.dtype) - logps, zero).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
        kl = torch.exp(ref_gap) - ref_gap - 1.0
        per_token = per_token + beta * kl
    weighted = per_token * weight

    n_seq = max(logps.shape[0], 1) if total_sequences is None else total_sequences
    if loss_type == "grpo":
        loss = (weighted.sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)).sum() / n_seq
    elif loss_type == "dr_grpo":
        loss = weighted.sum() / (n_seq * max_completion_length)
    else:  # bnpo and dapo share the maths; they differ in which token count the caller passes
        n_tok = _token_count(total_tokens, weight.sum(), "total_tokens")
        loss = weighted.sum() / torch.clamp(torch.as_tensor(n_tok, dtype=logps.dtype, device=logps.device), min=1.0)

    with torch.no_grad():
        denom = weight.sum().clamp(min=1.0)
        low = (ratio < 1.0 - epsilon) & (adv < 0)
        high = (ratio > 1.0 + epsilon_high) & (adv > 0)
        stats = {
            "clip_ratio/low_mean": (low * weight).sum() / denom,
            "clip_ratio/high_mean": (high * weight).sum() / denom,
            "clip_ratio/region_mean": ((low | high) * weight).sum() / denom,
        }
        if kl is not None:
            stats["kl"] = (kl * weight).sum() / denom
    return loss, stats
