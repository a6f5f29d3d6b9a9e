"""BoxPolicy's network: a small CNN, a hashed bag-of-n-grams query encoder, and a dense mixture head.

The image (standardised and cut into patches by `patchify`) goes through a patch stem and three conv blocks
to a feature map at 1/STRIDE of the input side, with CoordConv channels, FiLM-modulated by the query. Every
cell of that map proposes one box, as detectors do: a query-conditioned logit (how likely the referred
structure is there) and a box (centre = the cell centre plus a bounded offset, and log sides). The policy
(`box.py`) is the mixture of one Gaussian per cell, weighted by the softmax of the logits. Being fully
convolutional, what is learned at one place transfers to every place, and a rewarded box credits the cells
that could have drawn it, not the whole image.
"""
from __future__ import annotations

import math
import re
import zlib
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MIN_SIZE = 0.01
"""Smallest box side, as a fraction of the image side (the floor of the log-size parameters)."""
LOG_MIN_SIZE = math.log(MIN_SIZE)
PATCH = 4
"""The stem reads PATCH x PATCH pixel patches."""
STRIDE = 2 * PATCH
"""The feature map is 1/STRIDE of the input side, so the input side must be a multiple of it."""
KEY_DIM = 16
OFFSET_REACH = 2.0
"""A cell's box centre lies within this many cells of the cell centre (tanh-squashed: smooth, no clamp)."""
LOGIT_GAIN = 8.0
"""Cell logits are the head's output times this (its weights are initialised down by it, so the first mixture
is near uniform): Adam then moves logits by about gain x lr per step, and the mixture can concentrate on the
structure within a few hundred steps instead of thousands."""
POLARITY_GAIN = 2.0
"""Gain of the query's polarity (the sign applied to the signed image), as LOGIT_GAIN for the logits."""
STD_GAIN = 8.0
"""The learned std multipliers are ``min + (max - min) * sigmoid(STD_GAIN * theta + b)``, theta starting at 0:
the gain makes Adam move them about STD_GAIN times faster than the other weights (a per-parameter learning
rate without touching the module's optimizer), and the sigmoid bounds them smoothly (no clamp)."""
STD_CEILING = 2.0
"""The std multipliers may grow to this multiple of ``init_std``."""

_WORD = re.compile(r"[^\W_]+")  # runs of Unicode letters and digits


def query_tokens(text: str) -> list[str]:
    """Lowercased words (runs of letters/digits) and word bigrams; ``w:`` / ``b:`` prefixes keep them apart."""
    words = _WORD.findall(text.lower())
    return [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]


def query_ids(text: str, buckets: int) -> list[int]:
    """Hash buckets of ``text``'s tokens: crc32, so ids are the same in every process (no salted ``hash``)."""
    return [zlib.crc32(token.encode("utf-8")) % buckets for token in query_tokens(text)]


def pack_queries(texts: Sequence[str], buckets: int) -> tuple[Tensor, Tensor]:
    """Flat ids and per-query offsets for ``nn.EmbeddingBag`` (an empty query pools to a zero vector)."""
    ids: list[int] = []
    offsets: list[int] = []
    for text in texts:
        offsets.append(len(ids))
        ids.extend(query_ids(text, buckets))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def patchify(images: Tensor) -> Tensor:
    """[B, S, S, 3] RGB images (uint8, or float in [0, 1]) -> [B, 3 * PATCH**2, S / PATCH, S / PATCH] network input.

    Each channel is standardised over its image first (``F.pixel_unshuffle`` order after): modalities differ
    wildly in brightness and the target is a local contrast. Done once per batch, so log-prob passes never
    repeat it.
    """
    b, height, width, channels = images.shape
    rows, cols = height // PATCH, width // PATCH
    # Rearrange first (cheap on uint8), so the statistics below reduce over contiguous memory.
    patches = images.reshape(b, rows, PATCH, cols, PATCH, channels).permute(0, 5, 2, 4, 1, 3)
    flat = patches.reshape(b, channels, height * width).float()
    if images.dtype == torch.uint8:
        flat = flat / 255.0
    centred = flat - flat.mean(2, keepdim=True)
    std = centred.square().mean(2, keepdim=True).sqrt()  # not Tensor.std: that is ~10x slower on CPU
    return (centred / (std + 0.05)).view(b, channels * PATCH * PATCH, rows, cols)


def _coords(batch: int, height: int, width: int, like: Tensor) -> Tensor:
    """[batch, 2, height, width] pixel-centre coordinates in [0, 1] (x then y)."""
    ys = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) / height
    xs = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) / width
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.GroupNorm(math.gcd(8, cout), cout), nn.ReLU(inplace=True))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class Proposals(NamedTuple):
    """One box per feature-map cell: mixture logits [B, P] and box parameters [B, P, 4] (P cells)."""

    logits: Tensor
    means: Tensor


class BoxNet(nn.Module):
    """(`patchify` d images [B, 3 * PATCH**2, S / PATCH, S / PATCH], query ids, offsets) -> `Proposals`.

    Box parameters are ``(cx, cy, log w, log h)`` in image-side units (see `box.py`). Centres stay within
    OFFSET_REACH cells of their cell and log sides within (log MIN_SIZE, 0), both by smooth squashing, so no
    mean ever leaves the image and every parameter keeps a gradient. `std` gives the input-independent std
    multipliers (centre: in units of the box's side; sides: log units).
    """

    def __init__(self, channels: int, query_dim: int, vocab_buckets: int, init_std: float, min_std: float,
                 learn_std: bool, init_box_size: float) -> None:
        super().__init__()
        half = max(8, channels // 2)
        self.embed = nn.EmbeddingBag(vocab_buckets, query_dim, mode="mean")
        nn.init.normal_(self.embed.weight, std=0.3)
        self.polarity = nn.Linear(query_dim, 1)
        # Patchify stem: 1x1 convs (plain matmuls) of the signed 4x4 pixel patches, and of their absolute
        # values plus coordinates; the query's sign multiplies the first after the conv (same thing, cheaper).
        self.stem_signed = nn.Conv2d(3 * PATCH * PATCH, half, 1, bias=False)
        self.stem_even = nn.Conv2d(3 * PATCH * PATCH + 2, half, 1, bias=False)
        self.stem_norm = nn.Sequential(nn.GroupNorm(math.gcd(8, half), half), nn.ReLU(inplace=True))
        self.context = _block(half, half)
        self.down = _block(half, channels, stride=2)
        self.film = nn.Linear(query_dim, 2 * channels)
        self.refine = nn.Sequential(_block(channels, channels), _block(channels, channels, dilation=2))
        # per cell: logit, centre offset (2), log sides (2), then KEY_DIM keys matched against the query
        self.head = nn.Conv2d(channels + 2, 5 + KEY_DIM, 1)
        self.queries = nn.Linear(query_dim, KEY_DIM)
        with torch.no_grad():
            self.polarity.weight.mul_(0.1)
            self.polarity.bias.zero_()
            self.head.weight.mul_(0.1)
            self.head.weight[0].div_(LOGIT_GAIN)
            self.head.weight[5:].mul_(10 / LOGIT_GAIN)
            self.head.bias.zero_()
            self.head.bias[3:5] = _logit(1 - math.log(init_box_size) / LOG_MIN_SIZE)
            self.queries.weight.div_(LOGIT_GAIN)
            self.queries.bias.zero_()
        self.min_std, self.max_std = float(min_std), STD_CEILING * float(init_std)
        self.learn_std = bool(learn_std)
        if learn_std:
            self._std_bias = _logit((init_std - self.min_std) / (self.max_std - self.min_std))
            self.std_logit = nn.Parameter(torch.zeros(4))
        else:
            self.register_buffer("fixed_std", torch.full((4,), float(init_std)))

    def std(self) -> Tensor:
        """[4] std multipliers at temperature 1: centre x, y (units of the box's width, height), log w, log h."""
        if self.learn_std:
            squashed = torch.sigmoid(STD_GAIN * self.std_logit + self._std_bias)
            return self.min_std + (self.max_std - self.min_std) * squashed
        return self.fixed_std

    def forward(self, patches: Tensor, ids: Tensor, offsets: Tensor) -> Proposals:
        """Mixture logits [B, P] and per-cell box parameters [B, P, 4] for B images and their queries."""
        b, _, height, width = patches.shape
        height, width = height // 2, width // 2  # the map after `down`
        if b == 0:
            return Proposals(patches.new_zeros(0, height * width), patches.new_zeros(0, height * width, 4))
        query = self.embed(ids, offsets)
        # The query sets the sign of the image the detector sees, so one blob detector serves targets darker
        # and brighter than their surroundings; |patches| lets an untrained policy see both kinds at once.
        sign = torch.tanh(POLARITY_GAIN * self.polarity(query))[:, :, None, None]
        even = torch.cat([patches.abs(), _coords(b, *patches.shape[2:], patches)], 1)
        stem = self.stem_norm(self.stem_signed(patches) * sign + self.stem_even(even))
        gamma, beta = self.film(query).chunk(2, dim=1)
        x = self.refine(self.down(self.context(stem)) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
        coords = _coords(b, height, width, x)
        raw = self.head(torch.cat([x, coords], 1)).flatten(2)  # [B, 5 + KEY_DIM, P]
        match = torch.einsum("bkp,bk->bp", raw[:, 5:], self.queries(query)) / math.sqrt(KEY_DIM)
        logits = (raw[:, 0] + match) * LOGIT_GAIN
        cell = torch.tensor([1.0 / width, 1.0 / height], device=x.device, dtype=x.dtype)[None, :, None]
        centre = coords.flatten(2) + OFFSET_REACH * cell * torch.tanh(raw[:, 1:3])
        log_size = LOG_MIN_SIZE * torch.sigmoid(-raw[:, 3:5])  # smooth squash into (log MIN_SIZE, 0)
        return Proposals(logits, torch.cat([centre, log_size], 1).transpose(1, 2))
