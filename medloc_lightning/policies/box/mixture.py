"""The distribution BoxPolicy samples from: a mixture of one diagonal Gaussian per feature-map cell.

Pure torch, no network. Box parameters are ``u = (cx, cy, log w, log h)`` in image-side units. A cell's
Gaussian has the cell's proposed box as its mean; its centre std is a multiple of that box's side (the IoU
a centre error costs depends on the error relative to the box, so one multiplier suits small and large
targets alike) and its log-side std a multiple of one. Temperature acts as in a language model: it divides
the mixture logits and multiplies every std.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["component_std", "mixture_log_weights", "mixture_logprob", "sample_mixture"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def mixture_log_weights(logits: Tensor, temperature: float) -> Tensor:
    """Log mixture weights [..., P] from cell logits [..., P] at ``temperature``."""
    return torch.log_softmax(logits / temperature, dim=-1)


def component_std(means: Tensor, std: Tensor, temperature: float) -> Tensor:
    """Stds [..., 4] of the Gaussians with means [..., 4], for std multipliers [4] at ``temperature``.

    The centre std scales with the component's own box side, taken without gradient: a box's size is
    learned from its own coordinate, not from how widely its centre happens to be sampled.
    """
    sides = means[..., 2:].detach().exp()
    scale = std * temperature
    return torch.cat([scale[:2] * sides, scale[2:].expand_as(sides)], dim=-1)


def mixture_logprob(params: Tensor, log_weights: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    """Log density [n, 1] of params [n, 4] under mixtures with log weights [n, P], means and stds [n, P, 4]."""
    z = (params.unsqueeze(1) - means) / stds
    components = (-0.5 * z.square() - stds.log()).sum(-1) - 4 * _LOG_SQRT_2PI
    return torch.logsumexp(log_weights + components, dim=1, keepdim=True)


def sample_mixture(log_weights: Tensor, means: Tensor, std: Tensor, temperature: float,
                   num_samples: int) -> tuple[Tensor, Tensor]:
    """``num_samples`` draws per mixture: params [B * num_samples, 4] (mixture-major) and components [B, G].

    Log weights [B, P] must already include the temperature (`mixture_log_weights`); ``std`` holds the
    multipliers [4] at temperature 1.
    """
    components = torch.multinomial(log_weights.exp(), num_samples, replacement=True)
    chosen = means.gather(1, components.unsqueeze(-1).expand(-1, -1, means.shape[-1]))
    noise = torch.randn_like(chosen) * component_std(chosen, std, temperature)
    return (chosen + noise).reshape(-1, means.shape[-1]), components
