"""Our side of the GRPO-step benchmark: `GRPOGroundingModule` + `QwenVLPolicy` in a real Lightning Trainer.

Every completion is forced to exactly ``new_tokens`` tokens (``min_new_tokens = max_new_tokens``) by a
benchmark-only policy subclass, the same constraint TRL gets through ``generation_kwargs``.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from typing import Any

from benchmarks._grpo_bench_common import (
    BenchSettings,
    CallTimer,
    StepRecorder,
    combine,
    cuda_sync,
    generate_probe,
    make_records,
    peak_rss_mib,
)


def _fixed_length_policy_class() -> type:
    from medloc_lightning.policies.qwen import QwenVLPolicy

    class FixedLengthQwenVLPolicy(QwenVLPolicy):
        """`QwenVLPolicy` whose sampled completions all have exactly ``max_new_tokens`` tokens."""

        def generation_config(self, **kwargs: Any) -> Any:
            config = super().generation_config(**kwargs)
            config.min_new_tokens = self.max_new_tokens
            return config

    return FixedLengthQwenVLPolicy


def build_module(s: BenchSettings, prefill_once: bool = True) -> Any:
    """The policy and module with the benchmark's settings (full fine-tune trains the vision tower too,
    like TRL; samples logging off, like TRL's default ``log_completions=False``)."""
    from medloc_lightning.module import GRPOGroundingModule
    from medloc_lightning.rewards import GroundingReward

    rows = s.prompts * s.generations
    policy = _fixed_length_policy_class()(
        s.model_dir, min_pixels=s.min_pixels, max_pixels=s.pixels, prompt_template=s.prompt_template,
        max_new_tokens=s.new_tokens, dtype=s.dtype, lora_r=s.lora_r if s.variant == "lora" else 0, lora_alpha=16,
        lora_dropout=0.05, freeze_vision=s.variant == "lora", logprob_batch_size=rows, prefill_once=prefill_once)
    return GRPOGroundingModule(
        policy, num_generations=s.generations, temperature=s.temperature, reward=GroundingReward(),
        iou_threshold=s.tau, beta=s.beta, loss_type=s.loss_type, micro_batch_size=rows,
        learning_rate=s.learning_rate, max_grad_norm=1.0, seed=s.seed)


def run_ours(s: BenchSettings, prefill_once: bool = True) -> dict[str, Any]:
    """Train ``warmup + steps`` steps; step wall and CPU times, the phase split, rewards, peak RSS.

    Phases are timed by wrapping the module's and the model's own calls: prefill = `qwen_prefill.prefill`
    inside ``policy._generate`` + generate's ``_prefill``; decode = ``_generate`` minus prefill; reference =
    ``_logprobs_no_grad``; log-probs = ``_chunk_loss`` (policy forward + loss); backward = ``_optimize``
    minus those two (backward, clipping, AdamW).
    """
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from medloc_lightning.policies.qwen import prefill as qwen_prefill
    from medloc_lightning.policies.qwen.model import base_model

    sync = cuda_sync(s.device)
    recorder = StepRecorder(s.warmup, sync)
    shapes: list[dict[str, int]] = []
    stats: list[dict[str, float]] = []
    timers: dict[str, CallTimer] = {}

    def rollout_probe(args: tuple, kwargs: dict, rollout: Any) -> None:
        stats.append({"completion_length": float(rollout.mask.sum(1).float().mean())})

    def step_probe(args: tuple, kwargs: dict, step: Any) -> None:
        stats[-1].update(reward=float(step.rewards.float().mean()), zero_std_groups=float(step.zero_std.float().mean()),
                         parsed=float(torch.isfinite(step.rollout.boxes).all(1).float().mean()))

    class Recorder(pl.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            policy = module.policy
            base = base_model(policy.model)
            timers["generate_call"] = CallTimer(policy, "_generate", sync)
            timers["generate"] = CallTimer(base, "generate", sync, generate_probe(shapes))
            timers["hf_prefill"] = CallTimer(base, "_prefill", sync)
            timers["shared_prefill"] = CallTimer(qwen_prefill, "prefill", sync,
                                                 active=lambda: timers["generate_call"].depth > 0)
            timers["rollout"] = CallTimer(policy, "sample", sync, rollout_probe)
            timers["reward"] = CallTimer(module, "_rollout", sync, step_probe)
            timers["reference"] = CallTimer(module, "_logprobs_no_grad", sync)
            timers["logprobs"] = CallTimer(module, "_chunk_loss", sync)
            timers["optimize"] = CallTimer(module, "_optimize", sync)

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            t = {name: timer.take() for name, timer in timers.items()}

            prefill = combine(t["hf_prefill"], t["shared_prefill"])
            phases = {"prefill_s": prefill, "decode_s": combine(t["generate_call"], prefill, sign=-1),
                      "reference_s": t["reference"], "logprobs_s": t["logprobs"],
                      "backward_s": combine(t["optimize"], t["reference"], t["logprobs"], sign=-1)}
            recorder.step_end(phases, {"generate_s": t["generate"][0], "rollout_s": t["rollout"][0], **stats[-1]})

    pl.seed_everything(s.seed, verbose=False)
    start = time.perf_counter()
    module = build_module(s, prefill_once)
    records = make_records(s.prompts * s.total_steps, s.image_size, s.seed, s.records)
    loader = DataLoader(records, batch_size=s.prompts, shuffle=False, collate_fn=list)
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
    out.update(side="ours" if prefill_once else "ours_plain", wall_s=time.perf_counter() - start,
               peak_rss_mib=peak_rss_mib(), generate_calls=shapes[s.warmup:], trainable_params=_trainable(module))
    if s.device.startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _trainable(module: Any) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
