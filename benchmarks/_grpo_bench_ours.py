"""Our side of the GRPO-step benchmark: `GRPOGroundingModule` + `QwenVLPolicy` in a real Lightning Trainer.

Every completion is forced to exactly ``new_tokens`` tokens (``min_new_tokens = max_new_tokens``) by a
benchmark-only policy subclass, the same constraint TRL gets through ``generation_kwargs``.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from typing import Any

from _grpo_bench_common import (
    BenchSettings,
    CallTimer,
    StepRecorder,
    cuda_sync,
    describe,
    generate_probe,
    make_records,
    peak_rss_mib,
)

PHASES = ("rollout", "reward", "logprobs", "backward")
"""The phases of `GRPOGroundingModule`'s step, as its own ``time/<phase>_s`` logs name them; backward
includes the policy forward, clipping and AdamW."""


def _fixed_length_policy_class() -> type:
    from medloc_lightning.policies.qwen import QwenVLPolicy

    class FixedLengthQwenVLPolicy(QwenVLPolicy):
        """`QwenVLPolicy` whose sampled completions all have exactly ``max_new_tokens`` tokens."""

        def generation_config(self, **kwargs: Any) -> Any:
            config = super().generation_config(**kwargs)
            config.min_new_tokens = self.max_new_tokens
            return config

    return FixedLengthQwenVLPolicy


def build_module(s: BenchSettings) -> Any:
    """The policy and module with the benchmark's settings (full fine-tune trains the vision tower too,
    like TRL; samples logging off, like TRL's default ``log_completions=False``)."""
    from medloc_lightning.module import GRPOGroundingModule
    from medloc_lightning.rewards import GroundingReward

    rows = s.prompts * s.generations
    policy = _fixed_length_policy_class()(
        s.model_dir, min_pixels=56 * 56, max_pixels=s.pixels, max_new_tokens=s.new_tokens, dtype=s.dtype,
        lora_r=s.lora_r if s.variant == "lora" else 0, lora_alpha=16, lora_dropout=0.05,
        freeze_vision=s.variant == "lora", logprob_batch_size=rows)
    return GRPOGroundingModule(
        policy, num_generations=s.generations, temperature=s.temperature, reward=GroundingReward(),
        iou_threshold=s.tau, beta=s.beta, loss_type=s.loss_type, micro_batch_size=rows,
        learning_rate=s.learning_rate, max_grad_norm=1.0, seed=s.seed)


def run_ours(s: BenchSettings) -> dict[str, Any]:
    """Train ``warmup + steps`` steps; step wall times, phase split, generate time, peak RSS.

    Phases are timed here by wrapping the module's own calls (not read from its logs, which it only
    builds on logging steps): ``policy.sample`` (rollout), ``_logprobs_no_grad`` (old/ref log-probs),
    ``_optimize`` minus those (forward + backward + clip + AdamW), ``_log_step``, and ``_grpo_step`` minus
    all of them (reward + advantages + bookkeeping).
    """
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    sync = cuda_sync(s.device)
    recorder = StepRecorder(s.warmup, sync)
    shapes: list[dict[str, int]] = []
    lengths: list[float] = []
    timers: dict[str, CallTimer] = {}

    def rollout_probe(args: tuple, kwargs: dict, rollout: Any) -> None:
        lengths.append(float(rollout.mask.sum(1).float().mean()))

    class Recorder(pl.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            timers["generate"] = CallTimer(module.policy.model, "generate", sync, generate_probe(shapes))
            timers["rollout"] = CallTimer(module.policy, "sample", sync, rollout_probe)
            timers["logprobs"] = CallTimer(module, "_logprobs_no_grad", sync)
            timers["optimize"] = CallTimer(module, "_optimize", sync)
            timers["log_step"] = CallTimer(module, "_log_step", sync)
            timers["grpo_step"] = CallTimer(module, "_grpo_step", sync)

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            t = {name: timer.take() for name, timer in timers.items()}
            recorder.step_end({
                "rollout_s": t["rollout"], "generate_s": t["generate"], "logprobs_s": t["logprobs"],
                "backward_s": t["optimize"] - t["logprobs"], "log_step_s": t["log_step"],
                "reward_s": t["grpo_step"] - t["rollout"] - t["optimize"] - t["log_step"],
                "completion_length": lengths[-1]})

    pl.seed_everything(s.seed, verbose=False)
    start = time.perf_counter()
    module = build_module(s)
    loader = DataLoader(make_records(s.prompts * s.total_steps, s.image_size, s.seed), batch_size=s.prompts,
                        shuffle=False, collate_fn=list)
    accelerator = "gpu" if s.device.startswith("cuda") else "cpu"
    precision = "bf16-true" if s.dtype == "bfloat16" and accelerator == "gpu" else "32-true"
    with tempfile.TemporaryDirectory(prefix="grpo-bench-ours-") as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=s.total_steps, precision=precision,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                             log_every_n_steps=s.log_every_n_steps, default_root_dir=root,
                             callbacks=[Recorder()])
        trainer.fit(module, train_dataloaders=loader)
    out = recorder.summary()
    # Everything in a step outside the four timed phases: Lightning's loop, hooks, logging, data loading.
    overhead = [t - sum(e.get(f"{p}_s", 0.0) for p in PHASES) for t, e in zip(recorder.step_times, recorder.extras)]
    out["extras"]["overhead_s"] = describe(overhead)
    out.update(side="ours", wall_s=time.perf_counter() - start, peak_rss_mib=peak_rss_mib(),
               generate_calls=shapes[s.warmup:], trainable_params=_trainable(module))
    if s.device.startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _trainable(module: Any) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
