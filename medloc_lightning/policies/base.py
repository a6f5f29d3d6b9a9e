"""The policy interface the GRPO and SFT modules depend on, and nothing more.

A policy turns a batch of grounding records into G sampled answers per prompt (`sample`), recomputes
per-token log-probs of those answers with gradients (`logprobs`), answers greedily for evaluation
(`predict`) and gives a supervised loss on the ground-truth answer (`sft_loss`). Boxes always leave the
policy in original-image pixels, so rewards and metrics never see model coordinates.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from medloc_lightning.data.records import Record

@dataclass
class Rollout:
    """G completions for each of B prompts, flattened prompt-major to N = B*G rows.

    Row ``b * G + g`` is completion ``g`` of prompt ``b``: a group never straddles rows of another prompt.
    """

    num_generations: int
    texts: list[str]
    """Decoded completions (a policy without text renders its answer in the canonical answer format)."""
    boxes: Tensor
    """[N, 4] float32 boxes in original-image pixels; a NaN row means no box could be parsed."""
    mask: Tensor
    """[N, T] 1.0 for completion tokens that count (up to and including the first EOS), else 0.0."""
    logps: Tensor | None = None
    """[N, T] detached per-token log-probs under the sampling policy (the 'old' log-probs), or None when the
    policy did not compute them; the module then recomputes them when it needs them (num_iterations > 1)."""
    state: Any = None
    """Policy-private payload that `logprobs` needs to re-score these completions (ids, pixels, ...)."""
    info: dict[str, Tensor] = field(default_factory=dict)
    """Optional per-row diagnostics the module logs as means (e.g. ``truncated`` as 0/1)."""
    kept: list[int] | None = None
    """Indices into the input batch of the B prompts sampled here (None: all of them, in order)."""
    rejected: dict[int, str] = field(default_factory=dict)
    """Batch index -> reason, for records the policy refused up front (e.g. a prompt longer than the context:
    truncating would cut image tokens). The module warns and counts them."""

    @property
    def num_rows(self) -> int:
        return self.boxes.shape[0]

    @property
    def num_prompts(self) -> int:
        return self.num_rows // self.num_generations


@dataclass(frozen=True)
class Sharding:
    """How the module runs the policy's weights, passed to `GroundingPolicy.configure`."""

    sharded: bool = False
    """Weights are sharded over ranks (FSDP, FSDP2, any number of ranks): submodules may then run only inside
    the root forward, so no shortcut may call them directly."""
    synced_generation: bool = False
    """Every rank must keep decoding until all are done (``synced_gpus``), or the per-layer all-gathers of
    sharded weights deadlock."""


class GroundingPolicy(nn.Module, abc.ABC):
    """Base class of every policy. Subclasses are plain ``nn.Module`` s so Lightning moves and saves them.

    Everything the modules use is declared here: a policy written against this class alone works with
    `GRPOGroundingModule` and `SFTGroundingModule`.
    """

    frozen_weights_reloadable: bool = False
    """True when ``configure()`` restores every frozen parameter exactly (e.g. from a pretrained checkpoint):
    checkpoints then hold only the trainable weights (a LoRA run saves megabytes, not the base model)."""

    sharding: Sharding = Sharding()
    """What `configure` was last told about sharding (unsharded until then)."""

    def configure(self, sharding: Sharding | None = None) -> None:
        """Build or load heavy weights; called from ``LightningModule.configure_model`` with the strategy's
        `Sharding` (policies also call it bare, which keeps the sharding already recorded). Idempotent.

        Subclasses that load weights lazily override it and call ``super().configure(sharding)`` first.
        """
        if sharding is not None:
            self.sharding = sharding

    @property
    def device(self) -> torch.device:
        """Where the policy's weights are (CPU before any are built)."""
        param = next(self.parameters(), None)
        return torch.device("cpu") if param is None else param.device

    @property
    def max_completion_length(self) -> int:
        """The most tokens one completion may have (Dr. GRPO's loss constant); 1 for single-token policies."""
        return 1

    @property
    def rows_per_forward(self) -> int | None:
        """The most completions one `logprobs` forward takes (None: any number). Under FSDP the module keeps its
        backward chunks within it, so every rank runs the same number of forwards."""
        return None

    def shard(self, mesh: Any) -> None:
        """FSDP2: shard this policy over a 1-D data-parallel device mesh (``ModelParallelStrategy``).

        The default makes the whole policy one FSDP unit; large models shard per block instead.
        """
        from torch.distributed.fsdp import fully_shard

        fully_shard(self, mesh=mesh)

    def enable_reference(self) -> None:
        """Make ``logprobs(..., reference=True)`` available (called once when beta > 0)."""
        raise NotImplementedError(f"{type(self).__name__} has no reference model; use beta=0")

    @abc.abstractmethod
    def sample(self, batch: Sequence[Record], num_generations: int, temperature: float) -> Rollout:
        """Sample ``num_generations`` answers per record without gradients."""

    @abc.abstractmethod
    def logprobs(self, rollout: Rollout, rows: Tensor | None = None, *, reference: bool = False) -> Tensor:
        """Per-token log-probs [len(rows), T] of ``rollout``'s completions (all rows when ``rows`` is None).

        With ``reference=False`` the result carries gradients; with ``reference=True`` it is computed
        under the frozen reference policy and without gradients.
        """

    @abc.abstractmethod
    def predict(self, batch: Sequence[Record]) -> tuple[list[str], Tensor]:
        """Greedy answers: texts and [B, 4] boxes in original pixels (NaN rows when unparsed)."""

    def sft_loss(self, batch: Sequence[Record]) -> Tensor:
        """Supervised loss of the ground-truth answer for ``batch`` (the SFT baseline)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement supervised training")

    def export(self, directory: str) -> None:
        """Write the trained weights (or adapter) in a format the model's own library loads for inference."""
        raise NotImplementedError(f"{type(self).__name__} has no export format")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def __getattr__(name: str) -> Any:
    if name in ("gt_boxes", "describe_record", "record_size", "record_image"):  # moved to the data package
        warnings.warn(f"medloc_lightning.policies.base.{name} moved to medloc_lightning.data.records; the old import "
                      "path will be removed in the next release", DeprecationWarning, stacklevel=2)
        from medloc_lightning.data import records

        return getattr(records, name)
    raise AttributeError(f"module 'medloc_lightning.policies.base' has no attribute {name!r}")
