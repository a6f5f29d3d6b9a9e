"""LightningModules: GRPO under an IoU-threshold reward (MedLoc-R1), and the SFT baseline.

Both wrap a `GroundingPolicy` and share evaluation: greedy answers scored by `GroundingMetrics` in
original-image pixels. Data flows one way in `GRPOGroundingModule.training_step`:
batch → rollout → rewards(τ) → advantages → loss. τ is read from ``self.iou_threshold``, which only the
`ThresholdCurriculumCallback` writes. What differs between strategies lives in `medloc_lightning.distributed`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from medloc_lightning import distributed
from medloc_lightning.boxes import box_iou
from medloc_lightning.counters import Counters
from medloc_lightning.grpo import (
    ADVANTAGE_SCALES, LOSS_TYPES, AdvantageScale, LossType, group_advantages, grpo_loss, loss_stat_keys,
    zero_std_groups,
)
from medloc_lightning.lightning_utils import logs_this_step, total_optimizer_steps
from medloc_lightning.metrics import GroundingMetrics
from medloc_lightning.policies.base import GroundingPolicy, Record, Rollout, Sharding, gt_boxes
from medloc_lightning.rewards import GroundingReward

LRSchedule = Literal["constant", "cosine", "linear"]
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
_HF_SCHEDULERS = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


class GroundingModule(pl.LightningModule):
    """Shared plumbing: the policy, AdamW with warm-up, greedy evaluation into `GroundingMetrics`, predict."""

    def __init__(
        self,
        policy: GroundingPolicy,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        max_grad_norm: float | None = 1.0,
        metric_thresholds: Sequence[float] = (0.3,),
    ) -> None:
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
        self.policy = policy
        self.learning_rate, self.weight_decay, self.adam_betas = learning_rate, weight_decay, tuple(adam_betas)
        self.warmup_steps, self.lr_schedule, self.max_grad_norm = int(warmup_steps), lr_schedule, max_grad_norm
        self.val_metrics = GroundingMetrics(thresholds=metric_thresholds)
        self.test_metrics = GroundingMetrics(thresholds=metric_thresholds)

    # --- model and optimizer ------------------------------------------------------------------------
    def configure_model(self) -> None:
        trainer = self._trainer
        sharded = distributed.is_sharded(trainer)
        self.policy.configure(Sharding(sharded=sharded, synced_generation=sharded and trainer.world_size > 1))
        if self._device_mesh is not None and not getattr(self, "_sharded", False):  # ModelParallelStrategy: FSDP2
            self.policy.shard(self.device_mesh["data_parallel"])
            self._sharded = True

    def on_fit_start(self) -> None:
        self.policy.train()  # from_pretrained returns eval mode

    @property
    def optimizer_steps_per_batch(self) -> int:
        """Optimizer steps per training batch (GRPO reuses a rollout μ times)."""
        return 1

    def configure_optimizers(self) -> Any:
        """AdamW, and ``lr_schedule`` after ``warmup_steps`` of linear warm-up (transformers' schedules) over
        every optimizer step of the run, μ per batch included."""
        from transformers import get_scheduler

        params = self.policy.trainable_parameters()
        if not params:
            raise ValueError(f"{type(self.policy).__name__} has no trainable parameters")
        optimizer = torch.optim.AdamW(
            params, lr=self.learning_rate, weight_decay=self.weight_decay, betas=self.adam_betas
        )
        total = math.inf if self._trainer is None else total_optimizer_steps(self.trainer, self.optimizer_steps_per_batch)
        if self.lr_schedule != "constant" and not math.isfinite(total):
            raise ValueError(f"lr_schedule={self.lr_schedule!r} decays over the run, but the run has no end: "
                             "set trainer.max_steps or trainer.max_epochs")
        scheduler = get_scheduler(_HF_SCHEDULERS[self.lr_schedule], optimizer, num_warmup_steps=self.warmup_steps,
                                  num_training_steps=None if self.lr_schedule == "constant" else int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        clip = self.max_grad_norm if gradient_clip_val is None else gradient_clip_val
        if clip:
            distributed.clip_grad_norm(self, clip)

    # --- evaluation -----------------------------------------------------------------------------------
    def _evaluate(self, batch: Sequence[Record], metrics: GroundingMetrics) -> dict[str, Any]:
        texts, boxes = self.policy.predict(batch)
        target = gt_boxes(batch, device=self.device)
        boxes = boxes.to(self.device, torch.float32)
        metrics.update(boxes, target)
        return {"samples": {"records": batch, "texts": texts, "boxes": boxes, "ious": box_iou(boxes, target)}}

    def validation_step(self, batch: Sequence[Record], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: Sequence[Record], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch, self.test_metrics)

    def _log_metrics(self, metrics: GroundingMetrics, stage: str) -> dict[str, float]:
        values = {f"{stage}/{k}": float(v) for k, v in metrics.compute().items()}  # synced across ranks
        self.log_dict(values, sync_dist=False, rank_zero_only=False)
        metrics.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(self, batch: Sequence[Record], batch_idx: int) -> list[dict[str, Any]]:
        """One dict per record: id, predicted bbox (original pixels, None when unparsed), the answer text,
        and the IoU when the record carries a ground-truth box."""
        texts, boxes = self.policy.predict(batch)
        out = []
        for record, text, box in zip(batch, texts, boxes.tolist()):
            parsed = all(math.isfinite(v) for v in box)
            row = {"id": record.get("id"), "bbox": box if parsed else None, "answer": text}
            if record.get("bbox") is not None:
                row["iou"] = float(box_iou(torch.tensor(box), torch.tensor(record["bbox"], dtype=torch.float32)))
            out.append(row)
        return out

    # --- checkpoints ----------------------------------------------------------------------------------
    def _names(self, trainable: bool | None = None) -> set[str]:
        """State-dict names of parameters (``trainable`` filters by requires_grad) or, with None, of every
        parameter and buffer; wrapper prefixes (FSDP, activation checkpointing, compile) removed."""
        items = self.named_parameters() if trainable is not None else [*self.named_parameters(), *self.named_buffers()]
        names = set()
        for name, tensor in items:
            if trainable is None or tensor.requires_grad == trainable:
                for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
                    name = name.replace(wrapper, "")
                names.add(name)
        return names

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.policy.frozen_weights_reloadable:
            frozen = self._names(trainable=False)
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            checkpoint["medloc_frozen_weights_dropped"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("medloc_frozen_weights_dropped"):
            saved = set(checkpoint["state_dict"])
            missing, unexpected = sorted(self._names(trainable=True) - saved), sorted(saved - self._names())
            if missing or unexpected:
                raise ValueError(
                    "checkpoint does not match this model's trainable weights (another policy configuration?): "
                    f"missing {missing[:3]}, unexpected {unexpected[:3]}")
            self.strict_loading = False  # frozen weights were rebuilt by configure_model

    def export(self, directory: str) -> None:
        """Write the trained policy in its library's format (HF folder / LoRA adapter for Qwen2.5-VL)."""
        self.policy.export(directory)


class SFTGroundingModule(GroundingModule):
    """Supervised baseline on the answer text (the paper's SFT row, and a warm start for GRPO)."""

    def training_step(self, batch: Sequence[Record], batch_idx: int) -> Tensor:
        loss = self.policy.sft_loss(batch)
        self.log("train/sft_loss", loss, prog_bar=True, batch_size=len(batch))
        return loss


@dataclass
class GRPOStep:
    """Everything one GRPO step computes from a batch, in the order it is computed."""

    records: list[Record]
    """The prompts the policy kept (B), in rollout order."""
    rollout: Rollout
    tau: float
    ious: Tensor
    """[N] IoU of each completion with its prompt's GT box (0 when no box was parsed)."""
    rewards: Tensor
    """[N] total reward at ``tau``."""
    parts: dict[str, Tensor]
    """The reward's components ([N] each: ``accuracy``, ``format``)."""
    advantages: Tensor
    """[N] group-relative advantages."""
    zero_std: Tensor
    """[B] groups whose rewards are all equal (no learning signal)."""
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """This rank's degenerate cases (`Counters` keys); summed over ranks before they are counted."""

    def samples(self) -> dict[str, Any]:
        """The first completion of each group, for `SampleLoggingCallback`."""
        G = self.rollout.num_generations
        return {"records": self.records, "texts": self.rollout.texts[::G], "boxes": self.rollout.boxes[::G],
                "ious": self.ious[::G], "rewards": self.rewards[::G], "tau": self.tau}


@dataclass
class LossInputs:
    """What the loss of every chunk of one optimizer step shares."""

    mask: Tensor
    """[N, T] float completion mask."""
    old: Tensor | None
    """[N, T] log-probs under the sampling policy (None: on-policy, the current ones detached)."""
    ref: Tensor | None
    """[N, T] log-probs under the reference (None when beta is 0)."""
    total_tokens: Tensor
    """The token normalizer of bnpo/dapo (see `GRPOGroundingModule._agree`)."""
    chunks: list[Tensor]
    """Row indices of this rank's backward chunks."""
    num_chunks: int
    """Backward passes every rank runs (the most chunks of any rank)."""


class GRPOGroundingModule(GroundingModule):
    """GRPO for grounding with the reward 1[IoU ≥ τ] (or a variant), τ read from ``self.iou_threshold``.

    Manual optimization, on purpose: one rollout of B prompts × G completions serves ``num_iterations``
    optimizer steps with its old log-probs cached (TRL's μ), and each step backpropagates in row chunks of
    ``micro_batch_size`` so memory is bounded while the loss keeps the normalization of the whole batch.
    A bigger generation batch is a bigger ``batch_size`` in the data, not Trainer gradient accumulation.
    An optimizer step whose loss or gradient is NaN/inf changes no weight (counted, warned), and
    ``max_nonfinite_steps`` such steps in a row stop training with an error.
    ``training_step`` returns ``{"loss", "ious", "samples"}``: the first two are the
    `ThresholdCurriculumCallback` contract, the last feeds `SampleLoggingCallback`.
    """

    def __init__(
        self,
        policy: GroundingPolicy,
        num_generations: int = 8,
        temperature: float = 0.9,
        reward: GroundingReward | None = None,
        iou_threshold: float = 0.5,
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        loss_type: LossType = "grpo",
        scale_rewards: AdvantageScale = "group",
        num_iterations: int = 1,
        micro_batch_size: int = 16,
        seed: int = 0,
        fsdp_summon_for_generation: bool = False,
        max_nonfinite_steps: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, **kwargs)
        if num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (GRPO compares completions in a group), got {num_generations}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if scale_rewards not in ADVANTAGE_SCALES:
            raise ValueError(f"scale_rewards must be one of {ADVANTAGE_SCALES}, got {scale_rewards!r}")
        if num_iterations < 1 or micro_batch_size < 1:
            raise ValueError(f"num_iterations and micro_batch_size must be >= 1, got {num_iterations}, {micro_batch_size}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold!r}")
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps!r}")
        self.automatic_optimization = False
        self.num_generations, self.temperature = int(num_generations), float(temperature)
        self.reward = GroundingReward() if reward is None else reward
        self.iou_threshold = float(iou_threshold)
        self.beta, self.epsilon, self.epsilon_high = float(beta), float(epsilon), epsilon_high
        self.loss_type, self.scale_rewards = loss_type, scale_rewards
        self.num_iterations, self.micro_batch_size = int(num_iterations), int(micro_batch_size)
        self.seed, self.fsdp_summon_for_generation = int(seed), fsdp_summon_for_generation
        self.max_nonfinite_steps, self._nonfinite_streak = int(max_nonfinite_steps), 0
        self._step_loss: Tensor | None = None  # the loss of the optimizer step in flight, for its checks
        self.counts = Counters()

    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.num_iterations

    def configure_model(self) -> None:
        super().configure_model()
        if self.beta > 0:
            self.policy.enable_reference()

    # --- the step -------------------------------------------------------------------------------------
    def training_step(self, batch: Sequence[Record], batch_idx: int) -> dict[str, Any]:
        with distributed.step_rng(self.seed, self.global_rank, self.global_step, self.device):
            step = self._rollout(batch)
            losses, stats = self._optimize(step)
        self._log_step(step, stats, len(batch))
        # [B, G]: one row per prompt group, for a curriculum whose window counts groups
        return {"loss": losses, "ious": step.ious.detach().view(-1, self.num_generations), "samples": step.samples()}

    def _rollout(self, batch: Sequence[Record]) -> GRPOStep:
        """Sample G completions per prompt, then score them at the current τ: rewards and advantages."""
        tau, G = float(self.iou_threshold), self.num_generations
        clock = time.perf_counter()
        with distributed.gathered_for_generation(self, self.fsdp_summon_for_generation):
            rollout = self.policy.sample(batch, G, self.temperature)
        rollout_s = time.perf_counter() - clock

        clock = time.perf_counter()
        records = [batch[i] for i in (range(len(batch)) if rollout.kept is None else rollout.kept)]
        target = gt_boxes(records, device=self.device).repeat_interleave(G, 0)
        ious = box_iou(rollout.boxes.to(self.device, torch.float32), target)
        rewards, parts = self.reward(ious, tau, rollout.texts)
        grouped = rewards.view(-1, G)
        if rollout.num_rows:
            advantages = group_advantages(grouped, self.scale_rewards).view(-1)
            zero_std = zero_std_groups(grouped)
            all_fail = (parts["accuracy"].view(-1, G) <= 0).all(1)
        else:
            advantages, zero_std = rewards, torch.zeros(0, dtype=torch.bool)
            all_fail = zero_std
        timings = {"rollout": rollout_s, "reward": time.perf_counter() - clock}
        counts = self._degenerate_cases(rollout, batch, zero_std, all_fail)
        return GRPOStep(records, rollout, tau, ious, rewards, parts, advantages, zero_std, timings, counts)

    def _optimize(self, step: GRPOStep) -> tuple[Tensor, dict[str, Tensor]]:
        """μ optimizer steps on one rollout, each backpropagated in row chunks (at most ``micro_batch_size`` rows)."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        rollout = step.rollout
        step.timings.update(logprobs=0.0, backward=0.0)
        n = rollout.num_rows
        mask = rollout.mask.to(self.device, torch.float32)
        size = self._chunk_rows()
        chunks = [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]
        num_chunks, total_tokens, any_rows, counts = self._agree(len(chunks), mask.sum(), n > 0, step.counts)
        for key, value in counts.items():
            self.counts.add(key, value)
        if not any_rows:
            self.counts.add("skipped_steps", 1, "every prompt of this step was rejected on every rank: step skipped")
            return torch.zeros((), device=self.device), self._stats([])

        clock = time.perf_counter()
        old = None if rollout.logps is None else rollout.logps.to(self.device)
        if old is None and self.num_iterations > 1:
            old = self._logprobs_no_grad(rollout, chunks, num_chunks, reference=False)
        ref = self._logprobs_no_grad(rollout, chunks, num_chunks, reference=True) if self.beta > 0 else None
        step.timings["logprobs"] = time.perf_counter() - clock
        inputs = LossInputs(mask, old, ref, total_tokens, chunks, num_chunks)

        clock = time.perf_counter()
        last_loss, stats = torch.zeros((), device=self.device), {}
        for _ in range(self.num_iterations):
            step_loss, step_stats = torch.zeros((), device=self.device), []
            for c in range(num_chunks):
                with distributed.no_gradient_sync(self, block=c < num_chunks - 1):
                    loss, chunk_stats = self._chunk_loss(step, inputs, c)
                    self.manual_backward(loss)
                step_loss = step_loss + loss.detach()
                if chunk_stats:
                    step_stats.append((chunk_stats, len(chunks[c])))  # stats only come from real chunks
            self._step_loss = step_loss
            optimizer.step()  # on_before_optimizer_step checks and clips; a skipped step still counts (τ, LR)
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            last_loss, stats = step_loss, self._stats(step_stats)
        step.timings["backward"] = time.perf_counter() - clock
        return last_loss, stats

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Skip a step whose loss or gradient is NaN/inf on any rank, else clip. Lightning calls this after
        fp16 AMP unscales the gradients, so the clip sees true norms; the norm is computed once for both."""
        loss, self._step_loss = self._step_loss, None
        if loss is None:
            return
        finite = bool(torch.isfinite(loss).all())
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        if self.max_grad_norm:
            norm = distributed.clip_grad_norm(self, self.max_grad_norm)
        else:
            norm = None if scaled else distributed.gradient_norm(self)
        # fp16 AMP: the gradient scaler owns overflowing gradients and skips those steps itself
        finite = finite and (scaled or norm is None or bool(torch.isfinite(norm)))
        if distributed.any_rank(self, not finite):
            self._skip_nonfinite_step(loss)
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without a gradient untouched
        else:
            self._nonfinite_streak = 0

    def _skip_nonfinite_step(self, loss: Tensor) -> None:
        """Count and report a step whose loss or gradient is NaN/inf; fail after too many in a row."""
        self._nonfinite_streak += 1
        self.counts.add("nonfinite_steps", 1)
        step = self.global_step
        if self._nonfinite_streak >= self.max_nonfinite_steps:
            raise RuntimeError(
                f"step {step}: {self._nonfinite_streak} optimizer steps in a row had a non-finite loss or gradient "
                f"(last loss {float(loss):g}) and were skipped. Likely cause: the policy's log-probs are NaN or inf "
                f"(diverged weights, fp16 overflow, or a learning rate too high: {self.learning_rate:g}). "
                f"Lower learning_rate or resume from an earlier checkpoint.")
        rank_zero_warn(f"step {step}: non-finite loss ({float(loss):g}) or gradient: optimizer step skipped, weights "
                       f"unchanged (counted in train/count_nonfinite_steps)")

    def _chunk_rows(self) -> int:
        """Rows per backward chunk. Under FSDP every rank must run the same number of forwards: a chunk is then
        at most one forward of the policy (`GroundingPolicy.rows_per_forward`), so agreeing on the number of
        chunks is enough."""
        size = self.micro_batch_size
        rows = self.policy.rows_per_forward
        return min(size, rows) if rows and distributed.is_sharded(self._trainer) else size

    def _stats(self, items: list[tuple[dict[str, Tensor], int]]) -> dict[str, Tensor]:
        """Row-weighted mean of the chunks' loss stats, with the same keys on every rank (zeros without rows)
        so their mean over ranks is one collective of one shape."""
        total = sum(w for _, w in items)
        zero = torch.zeros((), device=self.device)
        return {k: sum(s[k] * w for s, w in items) / total if total else zero for k in loss_stat_keys(self.beta)}

    def _chunk_loss(self, step: GRPOStep, inputs: LossInputs, c: int) -> tuple[Tensor, dict[str, Tensor]]:
        rollout, chunks = step.rollout, inputs.chunks
        if c >= len(chunks):  # (n == 0 means no chunks)
            # This rank ran out of rows but others did not: every rank must run the same forwards and
            # backwards (collectives under DDP/FSDP), so run a zero-weighted one.
            if not chunks:
                return sum(p.sum() * 0.0 for p in self.policy.trainable_parameters()), {}
            rows = chunks[0][:1]
            return self.policy.logprobs(rollout, rows.to(rollout.mask.device)).sum() * 0.0, {}
        rows = chunks[c]
        logps = self.policy.logprobs(rollout, rows.to(rollout.mask.device)).to(self.device)
        rows = rows.to(self.device)
        return grpo_loss(
            logps,
            logps.detach() if inputs.old is None else inputs.old[rows],
            step.advantages[rows],
            inputs.mask[rows],
            ref_logps=None if inputs.ref is None else inputs.ref[rows],
            beta=self.beta,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            loss_type=self.loss_type,
            # dr_grpo's constant: the generation limit (TRL's max_completion_length), not this batch's width
            max_completion_length=max(self.policy.max_completion_length, inputs.mask.shape[1]),
            total_sequences=rollout.num_rows,
            total_tokens=inputs.total_tokens,
        )

    def _logprobs_no_grad(self, rollout: Rollout, chunks: list[Tensor], num_chunks: int, reference: bool) -> Tensor:
        with torch.no_grad():
            parts = [self.policy.logprobs(rollout, rows.to(rollout.mask.device), reference=reference) for rows in chunks]
            if chunks and distributed.is_sharded(self._trainer):
                for _ in range(num_chunks - len(chunks)):  # the forwards other ranks run (FSDP all-gathers)
                    self.policy.logprobs(rollout, chunks[0][:1].to(rollout.mask.device), reference=reference)
        return torch.cat(parts).to(self.device)

    def _agree(self, num_chunks: int, tokens: Tensor, any_rows: bool, counts: dict[str, int]
               ) -> tuple[int, Tensor, bool, dict[str, int]]:
        """Agree across ranks on the number of backward chunks, pick the token normalizer, and sum the step's
        degenerate-case counts (so `Counters` hold global totals on every rank).

        ``bnpo`` normalizes by this rank's tokens (TRL's local micro-batch); ``dapo`` by the tokens of the
        whole generation batch over all ranks, divided by the world size because DDP averages gradients.
        """
        world = distributed.world_size(self)
        if world == 1:
            return num_chunks, tokens, any_rows, counts
        keys = sorted(counts)
        maxed, summed = distributed.max_and_sum(self, [num_chunks, float(tokens), float(any_rows)]
                                                + [counts[k] for k in keys])
        total = summed[1] / world if self.loss_type == "dapo" else tokens
        totals = {k: int(round(float(v))) for k, v in zip(keys, summed[3:])}
        return int(maxed[0]), total, bool(maxed[2] > 0), totals

    # --- bookkeeping ----------------------------------------------------------------------------------
    def _degenerate_cases(self, rollout: Rollout, batch: Sequence[Record], zero_std: Tensor,
                          all_fail: Tensor) -> dict[str, int]:
        """This rank's prompts rejected up front, empty and unparsed completions, zero-std and all-fail groups (no
        accuracy reward at all: the zero-std groups a too-strict τ causes). Each kind is warned about once."""
        counts = {
            "rejected": len(rollout.rejected),
            "empty": sum(1 for t in rollout.texts if not t.strip()),
            "unparsed": int(torch.isnan(rollout.boxes).any(1).sum()),
            "zero_std_groups": int(zero_std.sum()),
            "all_fail_groups": int(all_fail.sum()),
        }
        if rollout.rejected:
            index, reason = next(iter(rollout.rejected.items()))
            self.counts.warn_once("rejected", f"{counts['rejected']} prompt(s) rejected up front, e.g. record "
                                              f"{batch[index].get('id')!r}: {reason}")
        if counts["empty"]:
            self.counts.warn_once("empty", f"{counts['empty']} empty completion(s) this step: reward 0")
        if counts["unparsed"]:
            self.counts.warn_once("unparsed",
                                  f"{counts['unparsed']} completion(s) without a parseable box this step: IoU 0")
        return counts

    def _log_step(self, step: GRPOStep, stats: dict[str, Tensor], batch_size: int) -> None:
        rollout, rewards, n = step.rollout, step.rewards, max(step.rollout.num_rows, 1)
        self.log("reward", rewards.sum() / n, prog_bar=True, on_step=True, batch_size=batch_size, logger=False)
        if not logs_this_step(self.trainer):
            return  # each self.log costs ~1 ms here: build the full set only when the logger writes
        grouped = rewards.view(-1, self.num_generations) if rollout.num_rows else rewards.view(0, 1)
        values: dict[str, float | Tensor] = {
            "train/reward": rewards.sum() / n,
            "train/reward_std": grouped.std(1).mean() if rollout.num_rows else torch.zeros(()),
            "train/frac_reward_zero_std": step.zero_std.float().mean() if step.zero_std.numel() else torch.ones(()),
            "train/accuracy_reward": step.parts["accuracy"].sum() / n,
            "train/format_reward": step.parts["format"].sum() / n,
            "train/iou": step.ious.sum() / n,
            "train/parse_rate": (~torch.isnan(rollout.boxes).any(1)).float().sum() / n,
            "train/completion_length": rollout.mask.sum(1).float().sum() / n,
            **{f"train/{k}": v for k, v in stats.items()},
            **{f"train/{k}": v.float().sum() / n for k, v in rollout.info.items() if v.numel() == rollout.num_rows},
        }
        values = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in values.items()}
        values = distributed.mean_over_ranks(self, values)
        values["train/tau"] = torch.tensor(step.tau)
        values.update({f"time/{k}_s": torch.tensor(v) for k, v in step.timings.items()})
        values.update({f"train/count_{k}": torch.tensor(float(v)) for k, v in self.counts.items()})
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=batch_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["medloc_counts"] = self.counts.state_dict()
        checkpoint["medloc_nonfinite_streak"] = self._nonfinite_streak

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.counts.load_state_dict(checkpoint.get("medloc_counts", {}))
        self._nonfinite_streak = int(checkpoint.get("medloc_nonfinite_streak", 0))
        self._warn_if_curriculum_dropped(checkpoint)

    def _warn_if_curriculum_dropped(self, checkpoint: dict[str, Any]) -> None:
        """Training resumed without the curriculum callback that saved τ would silently train at this module's
        own ``iou_threshold``: say so."""
        if self._trainer is None or self.trainer.state.fn != "fit":
            return
        present = {getattr(cb, "state_key", None) for cb in self.trainer.callbacks}
        for key, state in checkpoint.get("callbacks", {}).items():
            if key.startswith("ThresholdCurriculumCallback") and key not in present:
                saved_tau = state.get("schedule", {}).get("tau") if isinstance(state, dict) else None
                rank_zero_warn(f"the checkpoint carries curriculum state (tau = {saved_tau}) but no matching "
                               f"ThresholdCurriculumCallback is configured: training continues at iou_threshold = "
                               f"{self.iou_threshold}. Configure the curriculum it was trained with to resume it.")

