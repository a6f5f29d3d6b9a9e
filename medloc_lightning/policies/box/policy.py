"""BoxPolicy: a small CNN + query encoder with a dense mixture-of-Gaussians box head, trained on CPU by the
same GRPO module as Qwen2.5-VL.

A "completion" is one box. Every cell of the network's feature map proposes a box (`box_net.BoxNet`); the
policy draws a cell from the softmax of the cell logits, then the box parameters ``u = (cx, cy, log w, log h)``
(centre and log side lengths in units of the image side: the original image's width for x, its height for y)
from that cell's Gaussian (`box_mixture`). Temperature divides the logits and scales every std, as it
flattens a language model's next-token distribution. The deterministic mapping `params_to_boxes` turns any
real ``u`` into a valid box: centres are clamped to [0, 1], log sides to [log MIN_SIZE, 0], the box is
clipped to the image and, once rounded to integer original pixels, widened to at least one pixel. Rounding
is only the answer rendering (`format_answer`): the log-prob of a completion is the log density of the
*continuous* sample under the whole mixture (the cell it came from is not part of the answer), and counts
as a single token (T = 1, mask all ones).
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from medloc_lightning.checkpointing.loading import load_checkpoint
from medloc_lightning.errors import CheckpointError, ConfigError, DataError
from medloc_lightning.parsing import format_answer
from medloc_lightning.data.records import Record, describe_record, gt_boxes, record_image, record_size
from medloc_lightning.policies.base import GroundingPolicy, Rollout
from medloc_lightning.policies.box.mixture import (component_std, mixture_log_weights, mixture_logprob,
                                                   sample_mixture)
from medloc_lightning.policies.box.net import (LOG_MIN_SIZE, MIN_SIZE, STRIDE, BoxNet, Proposals, pack_queries,
                                               patchify)

__all__ = ["BoxPolicy", "BoxRolloutState", "boxes_to_params", "params_to_boxes", "pixel_boxes"]

WEIGHTS_FILE = "box_policy.pt"
CONFIG_FILE = "box_policy.json"
EXPORT_VERSION = 2
"""Version 2: the dense mixture head (version 1, a single Gaussian from attention pooling, cannot be loaded)."""


def params_to_boxes(params: Tensor, sizes: Tensor) -> Tensor:
    """Continuous xyxy boxes [N, 4] in original pixels from box parameters [N, 4] and image sizes [N, 2] (W, H).

    Any real parameters give a box inside the image with positive width and height.
    """
    centre = params[:, :2].clamp(0.0, 1.0)
    half = params[:, 2:].clamp(LOG_MIN_SIZE, 0.0).exp() / 2
    lo, hi = (centre - half).clamp(0.0, 1.0), (centre + half).clamp(0.0, 1.0)
    return torch.cat([lo, hi], 1) * sizes.repeat(1, 2)


def pixel_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Round boxes [N, 4] (inside the image) to integer pixels, at least one pixel wide and high."""
    rounded = boxes.round()
    for axis in (0, 1):
        limit = sizes[:, axis]
        lo = rounded[:, axis].clamp(min=0.0)
        hi = torch.maximum(rounded[:, axis + 2], lo + 1).clamp(max=limit)
        rounded[:, axis], rounded[:, axis + 2] = torch.minimum(lo, hi - 1), hi
    return rounded


def boxes_to_params(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Box parameters [N, 4] of xyxy boxes [N, 4] in original pixels (clipped to the image, sides floored)."""
    wh = sizes.repeat(1, 2)
    norm = (boxes / wh).clamp(0.0, 1.0)
    centre = (norm[:, :2] + norm[:, 2:]) / 2
    side = (norm[:, 2:] - norm[:, :2]).clamp(min=MIN_SIZE)
    return torch.cat([centre, side.log()], 1)


@dataclass
class BoxRolloutState:
    """What `BoxPolicy.logprobs` needs to re-score a rollout without decoding images again."""

    images: Tensor
    """[B, 3 * PATCH**2, S / PATCH, S / PATCH] preprocessed images (`box_net.patchify`) of the prompts."""
    query_ids: Tensor
    """Flat hashed query ids of the B prompts (``nn.EmbeddingBag`` input)."""
    query_offsets: Tensor
    """[B] start of each prompt's ids in ``query_ids``."""
    params: Tensor
    """[N, 4] sampled continuous box parameters (row ``b * G + g``)."""
    components: Tensor
    """[N] the cell each row was drawn from (diagnostics only: the log-prob sums over all cells)."""
    temperature: float
    proposals: Proposals | None = None
    """The network's outputs at sampling time, with their autograd graph, while unused (see `take_proposals`)."""
    versions: tuple[int, ...] = ()
    """In-place version counters of the weights that produced ``proposals``."""

    def take_proposals(self, versions: tuple[int, ...]) -> Proposals | None:
        """The sampling-time outputs, once, if the weights are still those versions (no optimizer step since)."""
        proposals, self.proposals = self.proposals, None
        return proposals if proposals is not None and versions == self.versions else None


class BoxPolicy(GroundingPolicy):
    """A fast grounding policy: a mixture of per-cell Gaussians over one box, conditioned on image and query.

    Args:
        image_size: side the image is resized to (square, aspect ratio not kept; boxes are normalised).
        channels: feature channels of the CNN (the first blocks have half).
        query_dim: size of the query embedding.
        vocab_buckets: hash buckets for query words and word bigrams.
        init_std: initial std multipliers: of the centre in units of the box's side, and of the log sides.
        min_std: floor of the learned std multipliers (their ceiling is ``box_net.STD_CEILING * init_std``).
        learn_std: learn the std multipliers (input-independent); else they stay at ``init_std``.
        init_box_size: initial box side as a fraction of the image side.
        answer_label: ``label`` written into answers by `format_answer`.
        seed: seeds the weight initialisation (the global RNG is left untouched).
    """

    def __init__(self, image_size: int = 128, channels: int = 32, query_dim: int = 32, vocab_buckets: int = 4096,
                 init_std: float = 0.3, min_std: float = 0.05, learn_std: bool = True, init_box_size: float = 0.15,
                 answer_label: str = "lesion", seed: int = 0) -> None:
        super().__init__()
        _check_args(image_size=image_size, channels=channels, query_dim=query_dim, vocab_buckets=vocab_buckets,
                    init_std=init_std, min_std=min_std, learn_std=learn_std, init_box_size=init_box_size)
        self.config: dict[str, Any] = dict(
            image_size=image_size, channels=channels, query_dim=query_dim, vocab_buckets=vocab_buckets,
            init_std=init_std, min_std=min_std, learn_std=learn_std, init_box_size=init_box_size,
            answer_label=answer_label, seed=seed)
        self.image_size = image_size
        self.vocab_buckets = vocab_buckets
        self.answer_label = answer_label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = BoxNet(channels, query_dim, vocab_buckets, init_std, min_std, learn_std, init_box_size)
        self._reference: BoxNet | None = None

    # ------------------------------------------------------------------ setup
    def enable_reference(self) -> None:
        """Freeze a deep copy of the current weights as the reference (kept out of the state dict). Idempotent."""
        if self._reference is None:
            ref = copy.deepcopy(self.net).requires_grad_(False)
            object.__setattr__(self, "_reference", ref)  # unregistered: not trained, saved or counted

    # ------------------------------------------------------------------ inputs
    def encode(self, batch: Sequence[Record]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Network images (`box_net.patchify`), query ids, offsets and image sizes [B, 2] (W, H), on the device."""
        side = self.image_size
        pixels = torch.from_numpy(np.stack([self._pixels(r) for r in batch])) if batch else \
            torch.zeros(0, side, side, 3, dtype=torch.uint8)
        ids, offsets = pack_queries([_query(r) for r in batch], self.vocab_buckets)
        sizes = torch.tensor([record_size(r) for r in batch], dtype=torch.float32).reshape(-1, 2)
        device = self.device
        return patchify(pixels.to(device)), ids.to(device), offsets.to(device), sizes.to(device)

    def _pixels(self, record: Record) -> np.ndarray:
        """[S, S, 3] uint8 RGB, resized to the network's side (aspect ratio not kept)."""
        rgb = record_image(record)
        if rgb.size != (self.image_size, self.image_size):
            rgb = rgb.resize((self.image_size, self.image_size), Image.BILINEAR)
        return np.asarray(rgb)

    # ------------------------------------------------------------------ answers
    def _answers(self, params: Tensor, sizes: Tensor) -> tuple[list[str], Tensor]:
        """Texts and boxes [N, 4] of box parameters. The boxes are integer pixel boxes, which `format_answer`
        writes exactly, so they are what `parse_box` reads back from the texts (without paying for parsing)."""
        rounded = pixel_boxes(params_to_boxes(params.detach().float(), sizes), sizes)
        texts = [format_answer(box, label=self.answer_label) for box in rounded.tolist()]
        return texts, rounded.reshape(-1, 4)

    def sample(self, batch: Sequence[Record], num_generations: int, temperature: float) -> Rollout:
        """G boxes per record from the mixture at ``temperature``; T = 1 token per box.

        The samples and log-probs carry no gradient. In grad mode the network's outputs are kept with their
        graph, so the first `logprobs` call on unchanged weights (GRPO's loss right after sampling) reuses
        them instead of running the CNN again: the same numbers, one forward pass less per step.
        """
        if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
            raise ValueError(f"num_generations must be an int >= 1, got {num_generations!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        images, ids, offsets, sizes = self.encode(batch)
        temperature, n = float(temperature), len(batch) * num_generations
        keep = torch.is_grad_enabled() and len(batch) > 0
        with torch.set_grad_enabled(keep):
            proposals = self.net(images, ids, offsets)
        with torch.no_grad():
            logits, means = proposals.logits.detach(), proposals.means.detach()
            log_weights = mixture_log_weights(logits, temperature)
            if len(batch):
                params, components = sample_mixture(log_weights, means, self.net.std(), temperature, num_generations)
            else:
                params, components = means.new_zeros(0, 4), torch.zeros(0, 0, dtype=torch.long)
            expand = lambda t: t.repeat_interleave(num_generations, 0)  # noqa: E731
            stds = component_std(means, self.net.std(), temperature)
            logps = mixture_logprob(params, expand(log_weights), expand(means), expand(stds))
            entropy = -(log_weights.exp() * log_weights).sum(1)
        texts, boxes = self._answers(params, sizes.repeat_interleave(num_generations, 0))
        state = BoxRolloutState(images, ids, offsets, params, components.reshape(-1), temperature,
                                proposals if keep else None, self._versions() if keep else ())
        std = self.net.std().detach() * temperature
        info = {"std_centre": std[:2].mean().expand(n).clone(), "std_size": std[2:].mean().expand(n).clone(),
                "mixture_entropy": expand(entropy)}
        return Rollout(num_generations=num_generations, texts=texts, boxes=boxes,
                       mask=torch.ones(n, 1, device=self.device), logps=logps, state=state, info=info)

    def _versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.net.parameters())

    def logprobs(self, rollout: Rollout, rows: Tensor | None = None, *, reference: bool = False) -> Tensor:
        """Log density [n, 1] of the stored samples under the current (or reference) weights at the rollout's
        temperature; the image encoder runs once per prompt of ``rows``, not once per row."""
        state = rollout.state
        if not isinstance(state, BoxRolloutState):
            raise ValueError(f"logprobs needs a rollout from BoxPolicy.sample, got state {type(state).__name__}")
        if reference and self._reference is None:
            raise RuntimeError("reference log-probs requested but enable_reference() was never called "
                               "(it is only called when beta > 0)")
        n = state.params.shape[0]
        rows = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        rows = rows.to(state.params.device)
        if rows.numel() == 0:
            return torch.zeros(0, 1, device=state.params.device)
        prompts, inverse = torch.unique(rows // rollout.num_generations, return_inverse=True)
        net = self.net if not reference else self._reference_on(state.params.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not reference):
            cached = state.take_proposals(self._versions()) if torch.is_grad_enabled() else None
            if cached is not None:
                logits, means = cached.logits[prompts], cached.means[prompts]
            else:
                logits, means = net(state.images[prompts], *_select_queries(state, prompts))
            log_weights = mixture_log_weights(logits, state.temperature)
            stds = component_std(means, net.std(), state.temperature)
            return mixture_logprob(state.params[rows], log_weights[inverse], means[inverse], stds[inverse])

    def _reference_on(self, device: torch.device) -> BoxNet:
        ref = self._reference
        assert ref is not None
        if next(ref.parameters()).device != device:
            ref.to(device)
        return ref

    def predict(self, batch: Sequence[Record]) -> tuple[list[str], Tensor]:
        """Greedy answers: the box proposed by the most likely cell, as texts and parsed boxes [B, 4]."""
        images, ids, offsets, sizes = self.encode(batch)
        with torch.no_grad():
            logits, means = self.net(images, ids, offsets)
            best = means[torch.arange(len(batch), device=means.device), logits.argmax(1)] if len(batch) else \
                means.new_zeros(0, 4)
        return self._answers(best, sizes)

    def sft_loss(self, batch: Sequence[Record]) -> Tensor:
        """Mean negative log-likelihood of the ground-truth box parameters under the mixture (temperature 1).

        Cells whose proposals explain the true box gain weight and move onto it, and the std multipliers fit
        the remaining error, so a GRPO run warm-started from SFT explores about as far as SFT is typically off.
        """
        images, ids, offsets, sizes = self.encode(batch)
        if not len(batch):
            return torch.zeros((), device=self.device, requires_grad=True)
        target = boxes_to_params(gt_boxes(batch, device=self.device), sizes)
        logits, means = self.net(images, ids, offsets)
        stds = component_std(means, self.net.std(), 1.0)
        return -mixture_logprob(target, mixture_log_weights(logits, 1.0), means, stds).mean()

    # ------------------------------------------------------------------ export
    def export(self, directory: str) -> None:
        """Write ``box_policy.pt`` (state dict) and ``box_policy.json`` (constructor args) to ``directory``."""
        os.makedirs(directory, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, os.path.join(directory, WEIGHTS_FILE))
        with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": "medloc-box-policy", "version": EXPORT_VERSION, "config": self.config}, f, indent=2)

    @classmethod
    def from_export(cls, directory: str, map_location: str | torch.device = "cpu") -> "BoxPolicy":
        """Load a policy written by `export` (weights read with ``weights_only=True``)."""
        config_path = os.path.join(directory, CONFIG_FILE)
        try:
            with open(config_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{config_path}: not a BoxPolicy export ({err})") from err
        if not isinstance(meta, dict) or meta.get("format") != "medloc-box-policy" or not isinstance(
                meta.get("config"), dict):
            raise CheckpointError(f"{config_path}: field 'format' must be 'medloc-box-policy' with a 'config' object")
        if meta.get("version") != EXPORT_VERSION:
            raise CheckpointError(f"{config_path}: field 'version' is {meta.get('version')!r}; this BoxPolicy reads "
                             f"version {EXPORT_VERSION} only (re-train and re-export older policies)")
        policy = cls(**meta["config"])
        state = load_checkpoint(os.path.join(directory, WEIGHTS_FILE), map_location=map_location)
        policy.load_state_dict(state)
        return policy.to(map_location)


def _select_queries(state: BoxRolloutState, prompts: Tensor) -> tuple[Tensor, Tensor]:
    """Ids and offsets of the queries of ``prompts`` (a sorted subset of the rollout's prompts)."""
    ends = torch.cat([state.query_offsets[1:], state.query_offsets.new_tensor([state.query_ids.numel()])])
    starts, stops = state.query_offsets[prompts].tolist(), ends[prompts].tolist()
    pieces = [state.query_ids[a:b] for a, b in zip(starts, stops)]
    lengths = torch.tensor([b - a for a, b in zip(starts, stops)], dtype=torch.long)
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]]).to(state.query_ids.device)
    return torch.cat(pieces) if pieces else state.query_ids[:0], offsets


def _query(record: Record) -> str:
    query = record.get("query")
    if not isinstance(query, str):
        raise DataError(f"{describe_record(record)}: field 'query' must be a str, got {type(query).__name__}")
    return query


def _check_args(*, image_size: int, channels: int, query_dim: int, vocab_buckets: int, init_std: float,
                min_std: float, learn_std: bool, init_box_size: float) -> None:
    for name, value, low in (("image_size", image_size, 16), ("channels", channels, 8), ("query_dim", query_dim, 1),
                             ("vocab_buckets", vocab_buckets, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"BoxPolicy: {name} must be an int >= {low}, got {value!r}")
    if image_size % STRIDE:
        raise ConfigError(f"BoxPolicy: image_size must be a multiple of {STRIDE} (the feature stride), "
                         f"got {image_size}")
    if not (math.isfinite(min_std) and min_std > 0 and math.isfinite(init_std) and init_std > 0):
        raise ConfigError(f"BoxPolicy: need min_std > 0 and init_std > 0, got {min_std}, {init_std}")
    if learn_std and not init_std > min_std:
        raise ConfigError(f"BoxPolicy: a learned std needs init_std > min_std, got {init_std} <= {min_std}")
    if not MIN_SIZE < init_box_size < 1:
        raise ConfigError(f"BoxPolicy: init_box_size must be in ({MIN_SIZE}, 1), got {init_box_size}")
