"""LightningModules: GRPO under an IoU-threshold reward (MedLoc-R1), and the SFT baseline.

Both wrap a `GroundingPolicy` and share evaluation: greedy answers scored by `GroundingMetrics` in
original-image pixels. Data flows one way in `GRPOGroundingModule.training_step`:
batch → rollout → rewards(τ) → advantages → loss. τ is read from ``self.iou_threshold``, which only the
`ThresholdCurriculumCallback` writes.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from torch import Tensor

from medloc_lightning.boxes import box_iou
from medloc_lightning.lightning_utils import logs_this_step
from medloc_lightning.grpo import ADVANTAGE_SCALES, LOSS_TYPES, group_advantages, grpo_loss, zero_std_groups
from medloc_lightning.metrics import GroundingMetrics
from medloc_lightning.policies.base import GroundingPolicy, Record, Rollout, gt_boxes
from medloc_lightning.rewards import GroundingReward
from medloc_lightning.sample_logging import log_samples

LR_SCHEDULES = ("constant", "cosine", "linear")


class GroundingModule(pl.LightningModule):
    """Shared plumbing: the policy, AdamW with warm-up, greedy evaluation into `GroundingMetrics`, predict."""

    def __init__(
        self,
        policy: GroundingPolicy,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        max_grad_norm: float | None = 1.0,
        metric_thresholds: Sequence[float] = (0.3,),
        log_samples_every: int = 50,
        num_log_samples: int = 2,
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
        self.log_samples_every, self.num_log_samples = int(log_samples_every), int(num_log_samples)
        self.val_metrics = GroundingMetrics(thresholds=metric_thresholds)
        self.test_metrics = GroundingMetrics(thresholds=metric_thresholds)

    # --- model and optimizer ------------------------------------------------------------------------
    def configure_model(self) -> None:
        self.policy.configure()
        if self._trainer is not None and isinstance(self.trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
            self.policy.sharded = True
            self.policy.synced_generation = self.trainer.world_size > 1
        if self._device_mesh is not None and not getattr(self, "_sharded", False):  # ModelParallelStrategy: FSDP2
            self.policy.shard(self.device_mesh["data_parallel"])
            self._sharded = True

    def on_fit_start(self) -> None:
        self.policy.train()  # from_pretrained returns eval mode

    def configure_optimizers(self) -> Any:
        params = self.policy.trainable_parameters()
        if not params:
            raise ValueError(f"{type(self.policy).__name__} has no trainable parameters")
        optimizer = torch.optim.AdamW(
            params, lr=self.learning_rate, weight_decay=self.weight_decay, betas=self.adam_betas
        )
        total = self.trainer.estimated_stepping_batches if self.trainer else math.inf
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(self.lr_schedule, self.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- evaluation -----------------------------------------------------------------------------------
    def _evaluate(self, batch: Sequence[Record], metrics: GroundingMetrics, stage: str, batch_idx: int) -> None:
        texts, boxes = self.policy.predict(batch)
        target = gt_boxes(batch, device=self.device)
        metrics.update(boxes.to(self.device, torch.float32), target)
        if batch_idx == 0 and stage == "val":
            log_samples(self, stage, batch, texts, boxes, box_iou(boxes.to(target), target), None)

    def validation_step(self, batch: Sequence[Record], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val", batch_idx)

    def test_step(self, batch: Sequence[Record], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test", batch_idx)

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

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        clip = self.max_grad_norm if gradient_clip_val is None else gradient_clip_val
        if clip:
            _clip(self, optimizer, clip)


class GRPOGroundingModule(GroundingModule):
    """GRPO for grounding with the reward 1[IoU ≥ τ] (or a variant), τ read from ``self.iou_threshold``.

    Manual optimization, on purpose: one rollout of B prompts × G completions serves ``num_iterations``
    optimizer steps with its old log-probs cached (TRL's μ), and each step backpropagates in row chunks of
    ``micro_batch_size`` so memory is bounded while the loss keeps the normalization of the whole batch.
    A bigger generation batch is a bigger ``batch_size`` in the data, not Trainer gradient accumulation.
    ``training_step`` returns ``{"loss", "ious"}``, the `ThresholdCurriculumCallback` contract.
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
        loss_type: str = "grpo",
        scale_rewards: str = "group",
        num_iterations: int = 1,
        micro_batch_size: int = 16,
        seed: int = 0,
        fsdp_summon_for_generation: bool = False,
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
        self.automatic_optimization = False
        self.num_generations, self.temperature = int(num_generations), float(temperature)
        self.reward = GroundingReward() if reward is None else reward
        self.iou_threshold = float(iou_threshold)
        self.beta, self.epsilon, self.epsilon_high = float(beta), float(epsilon), epsilon_high
        self.loss_type, self.scale_rewards = loss_type, scale_rewards
        self.num_iterations, self.micro_batch_size = int(num_iterations), int(micro_batch_size)
        self.seed, self.fsdp_summon_for_generation = int(seed), fsdp_summon_for_generation
        self.counts = {"rejected": 0, "empty": 0, "unparsed": 0, "zero_std_groups": 0, "all_fail_groups": 0,
                       "skipped_steps": 0}
        self._warned: set[str] = set()

    def configure_model(self) -> None:
        super().configure_model()
        if self.beta > 0:
            self.policy.enable_reference()

    # --- the step -------------------------------------------------------------------------------------
    def training_step(self, batch: Sequence[Record], batch_idx: int) -> dict[str, Tensor]:
        with self._step_rng():
            return self._grpo_step(batch)

    def _grpo_step(self, batch: Sequence[Record]) -> dict[str, Tensor]:
        tau, G, timings = float(self.iou_threshold), self.num_generations, {}
        clock = time.perf_counter()
        with self._generation_context():
            rollout = self.policy.sample(batch, G, self.temperature)
        timings["rollout"] = time.perf_counter() - clock

        clock = time.perf_counter()
        records = [batch[i] for i in (range(len(batch)) if rollout.kept is None else rollout.kept)]
        self._count_rejections(rollout, batch)
        target = gt_boxes(records, device=self.device).repeat_interleave(G, 0)
        ious = box_iou(rollout.boxes.to(self.device, torch.float32), target)
        rewards, parts = self.reward(ious, tau, rollout.texts)
        grouped = rewards.view(-1, G)
        advantages = group_advantages(grouped, self.scale_rewards).view(-1) if rollout.num_rows else rewards
        zero_std = zero_std_groups(grouped) if rollout.num_rows else torch.zeros(0, dtype=torch.bool)
        all_fail = (parts["accuracy"].view(-1, G) <= 0).all(1) if rollout.num_rows else zero_std
        self._count_degenerate(rollout, zero_std, all_fail)
        timings["reward"] = time.perf_counter() - clock

        losses, stats, more = self._optimize(rollout, advantages)
        timings.update(more)
        self._log_step(rollout, ious, rewards, parts, zero_std, stats, timings, tau, len(batch))
        if self.log_samples_every and self.global_step % self.log_samples_every < self.num_iterations:
            log_samples(self, "train", records, rollout.texts[::G], rollout.boxes[::G], ious[::G], rewards[::G], tau)
        return {"loss": losses, "ious": ious.detach()}

    def _optimize(self, rollout: Rollout, advantages: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
        """μ optimizer steps on one rollout, each backpropagated in row chunks of ``micro_batch_size``."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        timings = {"logprobs": 0.0, "backward": 0.0}
        n = rollout.num_rows
        mask = rollout.mask.to(self.device, torch.float32)
        chunks = [torch.arange(s, min(s + self.micro_batch_size, n)) for s in range(0, n, self.micro_batch_size)]
        num_chunks, total_tokens, any_rows = self._agree(len(chunks), mask.sum(), n > 0)
        if not any_rows:
            self.counts["skipped_steps"] += 1
            self._warn_once("skipped", "every prompt of this step was rejected on every rank: step skipped")
            return torch.zeros((), device=self.device), {}, timings

        clock = time.perf_counter()
        old = None if rollout.logps is None else rollout.logps.to(self.device)
        if old is None and self.num_iterations > 1:
            old = self._logprobs_no_grad(rollout, chunks, reference=False)
        ref = self._logprobs_no_grad(rollout, chunks, reference=True) if self.beta > 0 else None
        timings["logprobs"] = time.perf_counter() - clock

        clock = time.perf_counter()
        last_loss, stats = torch.zeros((), device=self.device), {}
        for _ in range(self.num_iterations):
            step_loss, step_stats = torch.zeros((), device=self.device), []
            for c in range(num_chunks):
                sync = c == num_chunks - 1
                with self._no_sync(not sync):
                    loss, chunk_stats = self._chunk_loss(rollout, chunks, c, advantages, mask, old, ref,
                                                         n, total_tokens)
                    self.manual_backward(loss)
                step_loss = step_loss + loss.detach()
                if chunk_stats:
                    step_stats.append((chunk_stats, len(chunks[c])))  # stats only come from real chunks
            if self.max_grad_norm:
                _clip(self, optimizer, self.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            last_loss, stats = step_loss, _weighted_mean(step_stats)
        timings["backward"] = time.perf_counter() - clock
        return last_loss, stats, timings

    def _chunk_loss(self, rollout: Rollout, chunks: list[Tensor], c: int, advantages: Tensor, mask: Tensor,
                    old: Tensor | None, ref: Tensor | None, n: int, total_tokens: Tensor
                    ) -> tuple[Tensor, dict[str, Tensor]]:
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
        loss, stats = grpo_loss(
            logps,
            logps.detach() if old is None else old[rows],
            advantages[rows],
            mask[rows],
            ref_logps=None if ref is None else ref[rows],
            beta=self.beta,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            loss_type=self.loss_type,
            # dr_grpo's constant: the generation limit (TRL's max_completion_length), not this batch's width
            max_completion_length=max(getattr(self.policy, "max_new_tokens", 0), mask.shape[1]),
            total_sequences=n,
            total_tokens=total_tokens,
        )
        return loss, stats

    def _logprobs_no_grad(self, rollout: Rollout, chunks: list[Tensor], reference: bool) -> Tensor:
        with torch.no_grad():
            parts = [self.policy.logprobs(rollout, rows.to(rollout.mask.device), reference=reference) for rows in chunks]
        return torch.cat(parts).to(self.device)

    # --- distributed helpers --------------------------------------------------------------------------
    def _agree(self, num_chunks: int, tokens: Tensor, any_rows: bool) -> tuple[int, Tensor, bool]:
        """Agree across ranks on the number of backward chunks, and pick the token normalizer.

        ``bnpo`` normalizes by this rank's tokens (TRL's local micro-batch); ``dapo`` by the tokens of the
        whole generation batch over all ranks, divided by the world size because DDP averages gradients.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return num_chunks, tokens, any_rows
        packed = torch.tensor([float(num_chunks), float(tokens), float(any_rows)], device=self.device)
        maxed = self.trainer.strategy.reduce(packed.clone(), reduce_op="max")
        summed = self.trainer.strategy.reduce(packed.clone(), reduce_op="sum")
        total = summed[1] / world if self.loss_type == "dapo" else tokens
        return int(maxed[0]), total, bool(maxed[2] > 0)

    @contextlib.contextmanager
    def _no_sync(self, block: bool) -> Iterator[None]:
        strategy = self.trainer.strategy if self._trainer is not None else None
        if block and isinstance(strategy, DDPStrategy):
            with strategy.block_backward_sync():
                yield
        else:
            yield

    @contextlib.contextmanager
    def _generation_context(self) -> Iterator[None]:
        """With ``fsdp_summon_for_generation``, gather the full parameters once for the whole rollout instead
        of per layer and per decoding step (faster, at the memory cost of one unsharded model)."""
        strategy = self.trainer.strategy if self._trainer is not None else None
        if not self.fsdp_summon_for_generation:
            yield
        elif isinstance(strategy, FSDPStrategy):
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.summon_full_params(self.trainer.model, writeback=False, recurse=True):
                yield
        elif isinstance(strategy, ModelParallelStrategy):
            from torch.distributed.fsdp import FSDPModule

            units = [m for m in self.modules() if isinstance(m, FSDPModule)]
            for unit in units:
                unit.set_reshard_after_forward(False)
                unit.unshard()
            try:
                yield
            finally:
                for unit in units:
                    unit.set_reshard_after_forward(True)
                    unit.reshard()
        else:
            yield

    @contextlib.contextmanager
    def _step_rng(self) -> Iterator[None]:
        """A step's randomness (sampling, dropout) is a pure function of (seed, rank, step): ranks differ,
        and a resumed run draws exactly what the uninterrupted one would have."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + self.global_rank * 7919 + self.global_step)
            yield

    # --- bookkeeping ----------------------------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"{message} (counted in train/count_{key}; later cases are counted silently)", stacklevel=2)

    def _count_rejections(self, rollout: Rollout, batch: Sequence[Record]) -> None:
        if rollout.rejected:
            self.counts["rejected"] += len(rollout.rejected)
            first = next(iter(rollout.rejected.items()))
            self._warn_once("rejected", f"{len(rollout.rejected)} prompt(s) rejected up front, e.g. record "
                                        f"{batch[first[0]].get('id')!r}: {first[1]}")

    def _count_degenerate(self, rollout: Rollout, zero_std: Tensor, all_fail: Tensor) -> None:
        """Counts: empty and unparsed completions, zero-std groups, and all-fail groups (no accuracy reward at
        all: the zero-std groups a too-strict τ causes)."""
        empty = sum(1 for t in rollout.texts if not t.strip())
        unparsed = int(torch.isnan(rollout.boxes).any(1).sum())
        self.counts["empty"] += empty
        self.counts["unparsed"] += unparsed
        self.counts["zero_std_groups"] += int(zero_std.sum())
        self.counts["all_fail_groups"] += int(all_fail.sum())
        if empty:
            self._warn_once("empty", f"{empty} empty completion(s) this step: reward 0")
        if unparsed:
            self._warn_once("unparsed", f"{unparsed} completion(s) without a parseable box this step: IoU 0")

    def _log_step(self, rollout: Rollout, ious: Tensor, rewards: Tensor, parts: dict[str, Tensor], zero_std: Tensor,
                  stats: dict[str, Tensor], timings: dict[str, float], tau: float, batch_size: int) -> None:
        n = max(rollout.num_rows, 1)
        self.log("reward", rewards.sum() / n, prog_bar=True, on_step=True, batch_size=batch_size, logger=False)
        if not logs_this_step(self.trainer):
            return  # each self.log costs ~1 ms here: build the full set only when the logger writes
        grouped = rewards.view(-1, self.num_generations) if rollout.num_rows else rewards.view(0, 1)
        lengths = rollout.mask.sum(1).float()
        values: dict[str, float | Tensor] = {
            "train/reward": rewards.sum() / n,
            "train/reward_std": grouped.std(1).mean() if rollout.num_rows else torch.zeros(()),
            "train/frac_reward_zero_std": zero_std.float().mean() if zero_std.numel() else torch.ones(()),
            "train/accuracy_reward": parts["accuracy"].sum() / n,
            "train/format_reward": parts["format"].sum() / n,
            "train/iou": ious.sum() / n,
            "train/parse_rate": (~torch.isnan(rollout.boxes).any(1)).float().sum() / n,
            "train/completion_length": lengths.sum() / n,
            **{f"train/{k}": v for k, v in stats.items()},
            **{f"train/{k}": v.float().sum() / n for k, v in rollout.info.items() if v.numel() == rollout.num_rows},
        }
        values = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in values.items()}
        values = self._mean_over_ranks(values)
        values["train/tau"] = torch.tensor(tau)
        values.update({f"time/{k}_s": torch.tensor(v) for k, v in timings.items()})
        values.update({f"train/count_{k}": torch.tensor(float(v)) for k, v in self.counts.items()})
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=batch_size)

    def _mean_over_ranks(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        if self._trainer is None or self.trainer.world_size == 1:
            return values
        keys = sorted(values)
        stacked = self.trainer.strategy.reduce(torch.stack([values[k] for k in keys]), reduce_op="mean")
        return dict(zip(keys, stacked.unbind()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["medloc_counts"] = dict(self.counts)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.counts.update(checkpoint.get("medloc_counts", {}))


def _weighted_mean(items: list[tuple[dict[str, Tensor], int]]) -> dict[str, Tensor]:
    total = sum(w for _, w in items)
    if not items or total == 0:
        return {}
    return {k: sum(s[k] * w for s, w in items) / total for k in items[0][0]}


def _clip(module: pl.LightningModule, optimizer: Any, max_norm: float) -> None:
    """Clip by global norm. FSDP1 needs its own sharding-aware clip (Lightning's refuses under FSDP); with
    FSDP2 the gradients are DTensors and torch's clip computes the norm over all shards."""
    model = module.trainer.model
    if hasattr(model, "clip_grad_norm_"):
        model.clip_grad_norm_(max_norm)
    elif isinstance(module.trainer.strategy, ModelParallelStrategy):
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], max_norm)
    else:
        module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")


def _lr_lambda(schedule: str, warmup: int, total: float):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or not math.isfinite(total) or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return factor
