"""TRL's side of the GRPO-step benchmark: ``trl.GRPOTrainer`` on the same model, records and reward.

The reward is ours through `TRLRewardFunction` (same cost as the module's); completions are forced to
``new_tokens`` tokens with ``generation_kwargs={"min_new_tokens": ...}``. Settings that TRL defaults
differently from us are set explicitly (bias-corrected KL off, no gradient checkpointing, constant LR).
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
    describe,
    generate_probe,
    make_records,
    peak_rss_mib,
)


def _dataset(s: BenchSettings) -> Any:
    from datasets import Dataset

    from medloc_lightning.parsing import build_prompt

    records = make_records(s.prompts * s.total_steps, s.image_size, s.seed, s.records)
    return Dataset.from_dict({
        # A string user turn: TRL puts the image placeholder before the text, like our prompt.
        "prompt": [[{"role": "user", "content": build_prompt(r["query"], s.prompt_template)}] for r in records],
        "image": [r["image"] for r in records],
        "solution": [r["bbox"] for r in records],
        "width": [r["width"] for r in records],
        "height": [r["height"] for r in records],
    })


def build_trainer(s: BenchSettings, output_dir: str, callbacks: list[Any]) -> Any:
    """A ``GRPOTrainer`` with the benchmark's settings."""
    import torch
    from peft import LoraConfig
    from transformers import Qwen2_5_VLForConditionalGeneration
    from trl import GRPOConfig, GRPOTrainer

    from medloc_lightning.policies.qwen.processor import load_processor
    from medloc_lightning.rewards import GroundingReward, TRLRewardFunction

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s.dtype]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(s.model_dir, dtype=dtype)
    processor = load_processor(s.model_dir, min_pixels=s.min_pixels, max_pixels=s.pixels)
    reward = TRLRewardFunction(GroundingReward(), tau=s.tau, bbox_column="solution",
                               size_columns=("width", "height"), min_pixels=s.min_pixels, max_pixels=s.pixels)
    on_gpu = s.device.startswith("cuda")
    config = GRPOConfig(
        output_dir=output_dir, use_cpu=not on_gpu, bf16=on_gpu and s.dtype == "bfloat16", fp16=False,
        per_device_train_batch_size=s.prompts * s.generations, num_generations=s.generations,
        max_completion_length=s.new_tokens, generation_kwargs={"min_new_tokens": s.new_tokens},
        temperature=s.temperature, top_p=1.0, top_k=0, max_steps=s.total_steps, beta=s.beta,
        loss_type=s.loss_type, use_bias_correction_kl=False, learning_rate=s.learning_rate,
        lr_scheduler_type="constant", max_grad_norm=1.0, gradient_checkpointing=False, logging_steps=1,
        report_to="none", save_strategy="no", seed=s.seed, shuffle_dataset=False, dataloader_num_workers=0,
        disable_tqdm=True)
    peft_config = None
    if s.variant == "lora":
        peft_config = LoraConfig(r=s.lora_r, lora_alpha=16, lora_dropout=0.05,
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=_dataset(s),
                       processing_class=processor, peft_config=peft_config, callbacks=callbacks)


def run_trl(s: BenchSettings) -> dict[str, Any]:
    """Train ``warmup + steps`` steps; step wall and CPU times, the phase split, TRL's logged metrics, peak RSS.

    Phases: prefill = generate's ``_prefill``; decode = ``generate`` minus it; reference = no-grad calls of
    ``_get_per_token_logps_and_entropies`` (the reference with beta > 0); log-probs = ``compute_loss``
    (policy forward + loss); backward = ``accelerator.backward`` + ``_clip_grad_norm`` + ``optimizer.step``.
    """
    import torch
    from transformers import TrainerCallback

    sync = cuda_sync(s.device)
    recorder = StepRecorder(s.warmup, sync)
    step_logs: list[dict[str, float]] = []
    shapes: list[dict[str, int]] = []
    timers: dict[str, CallTimer] = {}

    class Recorder(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
            timers["optimizer"] = CallTimer(optimizer, "step", sync)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            t = {name: timer.take() for name, timer in timers.items()}
            phases = {"prefill_s": t["prefill"], "decode_s": combine(t["generate"], t["prefill"], sign=-1),
                      "reference_s": t["reference"], "logprobs_s": t["loss_forward"],
                      "backward_s": combine(t["backward"], t["clip"], t["optimizer"])}
            recorder.step_end(phases, {"generate_s": t["generate"][0], "prepare_s": t["prepare"][0]})

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                step_logs.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grpo-bench-trl-") as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trainer(s, root, [Recorder()])
        model = trainer.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        timers["generate"] = CallTimer(base, "generate", sync, generate_probe(shapes))
        timers["prefill"] = CallTimer(base, "_prefill", sync)
        timers["reference"] = CallTimer(trainer, "_get_per_token_logps_and_entropies", sync,
                                        active=lambda: not torch.is_grad_enabled())
        # prompt processing + generate + decode + reward + advantages (+ reference log-probs when beta > 0)
        timers["prepare"] = CallTimer(trainer, "_generate_and_score_completions", sync)
        timers["loss_forward"] = CallTimer(trainer, "compute_loss", sync)
        timers["backward"] = CallTimer(trainer.accelerator, "backward", sync)
        timers["clip"] = CallTimer(trainer, "_clip_grad_norm", sync)
        trainer.train()
    out = recorder.summary()
    # TRL logs after on_step_end, so its log of step k joins the recorder's row for step k here.
    renames = {"completions/mean_length": "completion_length", "step_time": "trl_step_time_s",
               "reward": "reward", "frac_reward_zero_std": "zero_std_groups", "grad_norm": "grad_norm"}
    for row, entry in zip(out["per_step"], step_logs[s.warmup:]):
        row.update({new: entry[old] for old, new in renames.items() if old in entry})
    for new in renames.values():
        values = [row[new] for row in out["per_step"] if new in row]
        if values:
            out["extras"][new] = describe(values)
    out.update(side="trl", wall_s=time.perf_counter() - start, peak_rss_mib=peak_rss_mib(),
               generate_calls=shapes[s.warmup:],
               trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad))
    if s.device.startswith("cuda"):
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out
