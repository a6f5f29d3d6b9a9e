"""LightningModules: GRPO under an IoU-threshold reward (MedLoc-R1), and the SFT baseline.

Both wrap a `GroundingPolicy` and share evaluation: greedy answers scored by `GroundingMetrics` in
original-image pixels. Data flows one way in `GRPOGroundingModule.training_step`:
batch → rollout → rewards(τ) → advantages → loss. τ is read from ``self.iou_threshold``, which only the
`ThresholdCurriculumCallback` writes. What differs between strategies lives in `medloc_lightning.distributed`.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from medloc_lightning import distributed
from medloc_lightning.boxes import box_iou
from medloc_lightning.data.records import Record, gt_boxes
from medloc_lightning.errors import CheckpointError, ConfigError
from medloc_lightning.grpo import (
    ADVANTAGE_SCALES, LOSS_TYPES, AdvantageScale, LossType, group_advantages, grpo_loss, loss_stat_keys,
    zero_std_groups,
)
from medloc_lightning.lightning_utils import logs_this_step, total_optimizer_steps
from medloc_lightning.metrics import GroundingMetrics
from medloc_lightning.policies.base import GroundingPolicy, Rollout, Sharding
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
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if not learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {learning_rate!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
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
        if self.device_mesh is not None and not getattr(self, "_sharded", False):  # ModelParallelStrategy: FSDP2
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
            raise ConfigError(f"{type(self.policy).__name__} has no trainable parameters")
        optimizer = torch.optim.AdamW(
            params, lr=self.learning_rate, weight_decay=self.weight_decay, betas=self.adam_betas
        )
        total = math.inf if self._trainer is None else total_optimizer_steps(self.trainer, self.optimizer_steps_per_batch)
        if self.lr_schedule != "constant" and not math.isfinite(total):
            raise ConfigError(f"lr_schedule={self.lr_schedule!r} decays over the run, but the run has no end: "
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
                raise CheckpointError(
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


COUNTER_KEYS = ("rejected", "empty", "unparsed", "zero_std_groups", "all_fail_groups", "skipped_steps",
                "nonfinite_steps")
"""Prompts rejected up front, empty and unparsed completions, zero-std and all-fail groups, skipped steps, and
optimizer steps skipped for a non-finite loss or gradient."""


class Counters(Mapping[str, int]):
    """Totals of the degenerate cases training survives since its start (restored from checkpoints), logged as
    ``train/count_<key>``. ``add(key, n, warning)`` warns the first time ``key`` is counted; later cases are
    counted silently. ``warn_once(key, warning)`` gives that warning for cases counted elsewhere."""

    def __init__(self, keys: tuple[str, ...] = COUNTER_KEYS) -> None:
        self._counts = dict.fromkeys(keys, 0)
        self._warned: set[str] = set()

    def __getitem__(self, key: str) -> int:
        return self._counts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, key: str, n: int = 1, warning: str | None = None) -> None:
        if key not in self._counts:
            raise KeyError(f"unknown counter {key!r}; known: {sorted(self._counts)}")
        if n <= 0:
            return
        self._counts[key] += int(n)
        if warning is not None:
            self.warn_once(key, warning)

    def warn_once(self, key: str, warning: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"{warning} (counted in train/count_{key}; later cases are counted silently)",
                          stacklevel=3)

    def state_dict(self) -> dict[str, int]:
        return dict(self._counts)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            if key in self._counts:
                self._counts[key] = int(value)

    def __repr__(self) -> str:
        return f"Counters({self._counts})"


@dataclass
class GRPOStep:
    """Everything one GRPO step computes from a batch, in the order it is computed, and what it logs."""

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
    all_fail: Tensor
    """[B] groups where no completion earned any accuracy reward (the zero-std groups a too-strict τ causes)."""
    timings: dict[str, float]
    mask: Tensor
    """[N, T] float completion mask, on the module's device."""
    total_tokens: Tensor | None = None
    """The token normalizer of bnpo/dapo (see `GRPOGroundingModule._tally`)."""
    old: Tensor | None = None
    """[N, T] log-probs under the sampling policy (None: on-policy, the current ones detached)."""
    ref: Tensor | None = None
    """[N, T] log-probs under the reference (None when beta is 0)."""
    loss: Tensor | None = None
    """The summed chunk losses of the last optimizer step (None when the step was skipped)."""
    stats: list[tuple[dict[str, Tensor], int]] = field(default_factory=list)
    """The last optimizer step's loss statistics per chunk with real rows, and its number of rows."""

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start

    def samples(self) -> dict[str, Any]:
        """The first completion of each group, for `SampleLoggingCallback`."""
        G = self.rollout.num_generations
        return {"records": self.records, "texts": self.rollout.texts[::G], "boxes": self.rollout.boxes[::G],
                "ious": self.ious[::G], "rewards": self.rewards[::G], "tau": self.tau}

    def metrics(self, beta: float, counts: Mapping[str, int], full: bool = True) -> dict[str, Tensor]:
        """What the step logs: the mean reward (the progress bar's) and, with ``full``, every statistic. Means
        are taken over all ranks' completions (every rank must call this with the same ``full``), so the logs
        are the same on every rank; the loss statistics are row-weighted over chunks, zeros without rows."""
        rollout, n, device = self.rollout, max(self.rollout.num_rows, 1), self.rewards.device
        values = {"train/reward": self.rewards.sum() / n}
        if full:
            grouped = self.rewards.view(-1, rollout.num_generations) if rollout.num_rows else None
            rows = sum(w for _, w in self.stats)
            values.update({
                "train/reward_std": grouped.std(1).mean() if grouped is not None else torch.zeros(()),
                "train/frac_reward_zero_std": self.zero_std.float().mean() if self.zero_std.numel() else torch.ones(()),
                "train/accuracy_reward": self.parts["accuracy"].sum() / n,
                "train/format_reward": self.parts["format"].sum() / n,
                "train/iou": self.ious.sum() / n,
                "train/parse_rate": (~torch.isnan(rollout.boxes).any(1)).float().sum() / n,
                "train/completion_length": rollout.mask.sum(1).float().sum() / n,
                **{f"train/{k}": sum(s[k] * w for s, w in self.stats) / rows if rows else torch.zeros(())
                   for k in loss_stat_keys(beta)},
                **{f"train/{k}": v.float().sum() / n for k, v in rollout.info.items() if v.numel() == rollout.num_rows},
            })
        values = distributed.mean_over_ranks({k: torch.as_tensor(v, dtype=torch.float32, device=device)
                                              for k, v in values.items()})
        if full:
            values["train/tau"] = torch.tensor(self.tau)
            values.update({f"time/{k}_s": torch.tensor(v) for k, v in self.timings.items()})
            values.update({f"train/count_{k}": torch.tensor(float(v)) for k, v in counts.items()})
        return values


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
        _check_grpo_args(num_generations=num_generations, temperature=temperature, loss_type=loss_type,
                         scale_rewards=scale_rewards, num_iterations=num_iterations, micro_batch_size=micro_batch_size,
                         beta=beta, iou_threshold=iou_threshold, max_nonfinite_steps=max_nonfinite_steps)
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
            self._tally(step, batch)
            self._optimize(step)
        self.log_dict(step.metrics(self.beta, self.counts, full=logs_this_step(self.trainer)), on_step=True,
                      on_epoch=False, batch_size=len(batch))
        loss = torch.zeros((), device=self.device) if step.loss is None else step.loss
        # [B, G]: one row per prompt group, for a curriculum whose window counts groups
        return {"loss": loss, "ious": step.ious.detach().view(-1, self.num_generations), "samples": step.samples()}

    def _rollout(self, batch: Sequence[Record]) -> GRPOStep:
        """Sample G completions per prompt, then score them at the current τ: rewards and advantages."""
        tau, G = float(self.iou_threshold), self.num_generations
        clock = time.perf_counter()
        with distributed.gathered_for_generation(self, self.fsdp_summon_for_generation):
            rollout = self.policy.sample(batch, G, self.temperature)
        rollout_s, clock = time.perf_counter() - clock, time.perf_counter()
        records = [batch[i] for i in (range(len(batch)) if rollout.kept is None else rollout.kept)]
        target = gt_boxes(records, device=self.device).repeat_interleave(G, 0)
        ious = box_iou(rollout.boxes.to(self.device, torch.float32), target)
        rewards, parts = self.reward(ious, tau, rollout.texts)
        grouped = rewards.view(-1, G)
        advantages = group_advantages(grouped, self.scale_rewards).view(-1) if rollout.num_rows else rewards
        zero_std = zero_std_groups(grouped) if rollout.num_rows else torch.zeros(0, dtype=torch.bool)
        all_fail = (parts["accuracy"].view(-1, G) <= 0).all(1)
        timings = {"rollout": rollout_s, "reward": time.perf_counter() - clock, "logprobs": 0.0, "backward": 0.0}
        return GRPOStep(records, rollout, tau, ious, rewards, parts, advantages, zero_std, all_fail, timings,
                        mask=rollout.mask.to(self.device, torch.float32))

    def _tally(self, step: GRPOStep, batch: Sequence[Record]) -> None:
        """Sum this step's degenerate cases over ranks into `Counters` (global totals on every rank), warning once
        per kind, and set the token normalizer: ``bnpo`` takes this rank's tokens (TRL's local micro-batch),
        ``dapo`` the tokens of the whole generation batch over all ranks divided by the world size, because DDP
        averages gradients."""
        rollout = step.rollout
        local = {"rejected": len(rollout.rejected), "empty": sum(1 for t in rollout.texts if not t.strip()),
                 "unparsed": int(torch.isnan(rollout.boxes).any(1).sum()), "zero_std_groups": int(step.zero_std.sum()),
                 "all_fail_groups": int(step.all_fail.sum())}
        if rollout.rejected:
            index, reason = next(iter(rollout.rejected.items()))
            self.counts.warn_once("rejected", f"{local['rejected']} prompt(s) rejected up front, e.g. record "
                                              f"{batch[index].get('id')!r}: {reason}")
        if local["empty"]:
            self.counts.warn_once("empty", f"{local['empty']} empty completion(s) this step: reward 0")
        if local["unparsed"]:
            self.counts.warn_once("unparsed",
                                  f"{local['unparsed']} completion(s) without a parseable box this step: IoU 0")
        totals = distributed.sum_over_ranks({**local, "tokens": float(step.mask.sum())})
        tokens = totals.pop("tokens") / distributed.world_size()
        step.total_tokens = torch.tensor(tokens, device=self.device) if self.loss_type == "dapo" else step.mask.sum()
        for key, value in totals.items():
            self.counts.add(key, int(round(value)))

    def _optimize(self, step: GRPOStep) -> None:
        """μ optimizer steps on one rollout, each backpropagated in row chunks of at most ``micro_batch_size`` rows,
        as many chunks on every rank (`distributed.chunk_plan`)."""
        chunks = distributed.chunk_plan(step.rollout.num_rows, self._chunk_rows())
        if not chunks:
            self.counts.add("skipped_steps", 1, "every prompt of this step was rejected on every rank: step skipped")
            return
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        with step.timed("logprobs"):
            step.old = None if step.rollout.logps is None else step.rollout.logps.to(self.device)
            if step.old is None and self.num_iterations > 1:
                step.old = self._logprobs_no_grad(step.rollout, chunks, reference=False)
            if self.beta > 0:
                step.ref = self._logprobs_no_grad(step.rollout, chunks, reference=True)
        with step.timed("backward"):
            for _ in range(self.num_iterations):
                step.loss, step.stats = torch.zeros((), device=self.device), []
                for i, rows in enumerate(chunks):
                    with distributed.no_gradient_sync(self, block=i < len(chunks) - 1):
                        loss = self._chunk_loss(step, rows)
                        self.manual_backward(loss)
                    step.loss = step.loss + loss.detach()
                self._step_loss = step.loss
                optimizer.step()  # on_before_optimizer_step checks and clips; a skipped step still counts (τ, LR)
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()

    def _chunk_rows(self) -> int:
        """Rows per backward chunk. Under FSDP every rank must run the same number of forwards: a chunk is then
        at most one forward of the policy (`GroundingPolicy.rows_per_forward`), so equal numbers of chunks suffice."""
        rows = self.policy.rows_per_forward
        return min(self.micro_batch_size, rows) if rows and distributed.is_sharded(self._trainer) else self.micro_batch_size

    def _chunk_loss(self, step: GRPOStep, rows: Tensor | None) -> Tensor:
        """The loss of one chunk of rows, its statistics kept in ``step``. A padding pass (``rows`` None: this
        rank has no rows left) gives a zero-weighted loss through the same forward, or through the trainable
        weights when this rank has no row at all."""
        rollout = step.rollout
        if rows is None:
            if not rollout.num_rows:
                return sum(p.sum() * 0.0 for p in self.policy.trainable_parameters())
            return self.policy.logprobs(rollout, torch.arange(1)).sum() * 0.0
        logps = self.policy.logprobs(rollout, rows.to(rollout.mask.device)).to(self.device)
        rows = rows.to(self.device)
        loss, stats = grpo_loss(
            logps, logps.detach() if step.old is None else step.old[rows], step.advantages[rows],
            step.mask[rows], ref_logps=None if step.ref is None else step.ref[rows], beta=self.beta,
            epsilon=self.epsilon, epsilon_high=self.epsilon_high, loss_type=self.loss_type,
            # dr_grpo's constant: the generation limit (TRL's max_completion_length), not this batch's width
            max_completion_length=max(self.policy.max_completion_length, step.mask.shape[1]),
            total_sequences=rollout.num_rows, total_tokens=step.total_tokens)
        step.stats.append((stats, len(rows)))
        return loss

    def _logprobs_no_grad(self, rollout: Rollout, chunks: list[Tensor | None], reference: bool) -> Tensor:
        """[N, T] log-probs of this rank's rows without gradients; under FSDP also a padding forward per ``None``
        (every forward all-gathers the weights, so every rank runs as many)."""
        pad = bool(rollout.num_rows) and distributed.is_sharded(self._trainer)
        parts = []
        with torch.no_grad():
            for rows in chunks:
                if rows is not None:
                    parts.append(self.policy.logprobs(rollout, rows.to(rollout.mask.device), reference=reference))
                elif pad:
                    self.policy.logprobs(rollout, torch.arange(1).to(rollout.mask.device), reference=reference)
        return torch.cat(parts).to(self.device) if parts else torch.zeros(rollout.mask.shape, device=self.device)

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
        if distributed.any_rank(not finite):
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["medloc_counts"] = self.counts.state_dict()
        checkpoint["medloc_nonfinite_streak"] = self._nonfinite_streak

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.counts.load_state_dict(checkpoint.get("medloc_counts", {}))
        self._nonfinite_streak = int(checkpoint.get("medloc_nonfinite_streak", 0))


def _check_grpo_args(*, num_generations: int, temperature: float, loss_type: str, scale_rewards: str,
                     num_iterations: int, micro_batch_size: int, beta: float, iou_threshold: float,
                     max_nonfinite_steps: int) -> None:
    if num_generations < 2:
        raise ConfigError(f"num_generations must be >= 2 (GRPO compares completions in a group), got {num_generations}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if scale_rewards not in ADVANTAGE_SCALES:
        raise ConfigError(f"scale_rewards must be one of {ADVANTAGE_SCALES}, got {scale_rewards!r}")
    if num_iterations < 1 or micro_batch_size < 1:
        raise ConfigError(f"num_iterations and micro_batch_size must be >= 1, got {num_iterations}, {micro_batch_size}")
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta!r}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold must lie in [0, 1], got {iou_threshold!r}")
    if max_nonfinite_steps < 1:
        raise ConfigError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps!r}")
