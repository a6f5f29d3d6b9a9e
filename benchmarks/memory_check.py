"""Check the memory formulas of ``benchmarks/memory_plan.py`` against peak RSS measured on CPU (fp32).

For a few tiny Qwen2.5-VL shapes (built offline, text-only sequences so the decoder terms stand alone), each
phase's peak RSS rise above the RSS just before it (``VmHWM`` reset through ``/proc/self/clear_refs``) is
compared with the formula's prediction: weights (4 B x P), AdamW state (8 B x P), gradients (4 B x P), the
training pass's saved activations with and without gradient checkpointing (plus logits), LoRA dropout's extra
copies, and the generation KV cache. Large allocations must go straight back to the OS for RSS to follow
tensors, so the script re-executes itself with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed.

``--real-3b`` also builds the Qwen2.5-VL-3B architecture with random bf16 weights in memory (never saved;
about 7.5 GB) and measures its weights and one forward-only scoring pass at real width (vocabulary 151 936).

Run: OMP_NUM_THREADS=1 python -m benchmarks.memory_check [--real-3b] [--out benchmarks/results/memory_check.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.memory_plan import QWEN2_5_VL, ModelDims, activation_bytes_per_token_layer

MIB = 2**20
SHAPES = ({"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2},
          {"hidden_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2},
          {"hidden_size": 384, "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 6,
           "intermediate_size": 1536},
          {"hidden_size": 256, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "vocab_size": 151936})
"""Text shapes of the check (MLP 2 x hidden and vocabulary 1024 unless given); the last keeps Qwen's 151 936
vocabulary, so the logits terms dominate it. Vision towers are 64 wide and 1 deep (unused: text-only rows)."""


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Peak RSS rise (bytes) while ``fn`` runs, above the RSS just before it, and its result."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    result = fn()
    return float(_status("VmHWM") - before), result


def dims_of(model: Any) -> ModelDims:
    """`ModelDims` of a loaded model (text part; vision from its config)."""
    t, v = model.config.text_config, model.config.vision_config
    return ModelDims("tiny", hidden=t.hidden_size, layers=t.num_hidden_layers, heads=t.num_attention_heads,
                     kv_heads=t.num_key_value_heads, intermediate=t.intermediate_size, vocab=t.vocab_size,
                     tied=bool(model.config.tie_word_embeddings), vision_hidden=v.hidden_size,
                     vision_depth=v.depth, vision_intermediate=v.intermediate_size)


def score(model: Any, ids: Any, new_tokens: int) -> Any:
    """The policy's teacher-forced log-prob pass on text-only rows: logits of the last ``new_tokens`` + 1
    positions, log-softmax in float32 one row at a time (`token_logprobs`)."""
    from medloc_lightning.policies.qwen.batch import token_logprobs

    logits = model(input_ids=ids, use_cache=False, logits_to_keep=new_tokens + 1).logits[:, :-1]
    return token_logprobs(logits, ids[:, -new_tokens:], 1.0)


def build_from_config(text: dict[str, Any], dtype: Any) -> Any:
    """A random-weight Qwen2.5-VL from ``text`` dimensions, built in memory (anonymous pages, so its RSS is its
    size; a safetensors load would map the file instead)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {"vocab_size": 1024, "intermediate_size": 2 * text["hidden_size"], "max_position_embeddings": 4096,
            **text}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 1e6,
                                        "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]})
    vision = {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
              "out_hidden_size": text["hidden_size"], "fullatt_block_indexes": [0]}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.no_grad():
        return Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)


def check_shape(shape: dict[str, int], rows: int, length: int, new_tokens: int) -> list[dict[str, Any]]:
    import torch

    from medloc_lightning.policies.qwen.loading import apply_lora, lora_config, enable_gradient_checkpointing

    out: list[dict[str, Any]] = []
    name = "h{hidden_size} L{num_hidden_layers} heads {num_attention_heads}/{num_key_value_heads}".format(**shape) \
        + (f" V{shape['vocab_size']}" if "vocab_size" in shape else "")

    def record(what: str, measured: float, predicted: float, formula: str) -> None:
        out.append({"model": name, "what": what, "measured_mib": measured / MIB, "predicted_mib": predicted / MIB,
                    "ratio": measured / predicted if predicted else None, "formula": formula})

    measured, model = measure(lambda: build_from_config(shape, torch.float32))
    model.train()
    dims = dims_of(model)
    p = sum(x.numel() for x in model.parameters())
    record("weights", measured, 4.0 * p, f"4 B x P, P = {p:,}")
    tokens = rows * length
    v, h, L = dims.vocab, dims.hidden, dims.layers
    logits = rows * (new_tokens + 1) * v * 4.0 + rows * new_tokens * v * 4.0
    logits_formula = (f"logits (or their grad) {rows}x{new_tokens + 1}x{v}x4 B + scaled copies "
                      f"{rows}x{new_tokens}x{v}x4 B")
    torch.manual_seed(0)
    ids = torch.randint(20, v, (rows, length))

    def step() -> None:
        (score(model, ids, new_tokens)).sum().backward()

    step()  # the first backward allocates the gradients (4 B x P); later ones reuse them
    per_layer = activation_bytes_per_token_layer(dims, "fp32")
    act = per_layer * L * tokens
    measured, _ = measure(step)  # gradients already allocated: activations + logits only
    record("forward + backward, no checkpointing", measured, act + logits,
           f"4 B x (8h + 2kv + 4I) = {per_layer / 1024:.1f} KiB/token/layer x {L} layers x {tokens} tokens + "
           + logits_formula)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    measured, _ = measure(optimizer.step)
    largest = max(x.numel() for x in model.parameters())
    record("first AdamW step", measured, 8.0 * p + 8.0 * largest,
           "8 B x P (exp_avg, exp_avg_sq) + 2 temporaries of the largest parameter (CPU's per-tensor AdamW)")
    del optimizer
    enable_gradient_checkpointing(model, with_adapter=False)
    measured, _ = measure(step)
    ckpt = 4.0 * h * L * tokens + per_layer * tokens
    record("forward + backward, gradient checkpointing", measured, ckpt + logits,
           f"4 B x h x {L} layers x {tokens} tokens (layer inputs) + one layer recomputed + logits")
    model.zero_grad(set_to_none=True)
    del model
    gc.collect()

    adapter = lora_config(None, r=8, alpha=16, dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          freeze_vision=True)
    lora = apply_lora(build_from_config(shape, torch.float32), adapter)
    lora.train()
    measure(lambda: score(lora, ids, new_tokens).sum().backward())
    measured, _ = measure(lambda: score(lora, ids, new_tokens).sum().backward())
    lora_act = activation_bytes_per_token_layer(dims, "fp32", lora_dropout=True) * L * tokens
    record("LoRA r=8 (dropout 0.1) forward + backward", measured, lora_act + logits,
           "the activations above + 8h B/token/layer (LoRA dropout) + logits")
    del lora
    gc.collect()

    model = build_from_config(shape, torch.float32)
    group, prompt = 8, length - new_tokens
    gen_ids = ids[:2, :prompt]

    def generate() -> Any:
        with torch.no_grad():
            return model.generate(input_ids=gen_ids, attention_mask=torch.ones_like(gen_ids), do_sample=True,
                                  num_return_sequences=group, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  pad_token_id=0, eos_token_id=2)

    measured, _ = measure(generate)
    kv = 2 * 4.0 * L * dims.kv_dim * 2 * group * length
    transient = 4.0 * (3 * dims.intermediate + 4 * h) * 2 * group * prompt + 16.0 * 2 * group * v
    record("generate, 2 prompts x G=8 (plain path)", measured, kv + transient,
           f"KV cache 2 x 4 B x {L} x {dims.kv_dim} x 16 rows x {length} tokens + prefill transient "
           f"4 B x (3I + 4h) x 16 x {prompt} + 4 x 4 B x 16 x {v} (step logits, scores, probabilities)")
    return out


def check_real_3b(new_tokens: int = 32, rows: int = 2, prompt: int = 96) -> list[dict[str, Any]]:
    """Qwen2.5-VL-3B dimensions, random bf16 weights in memory: weights, and one no-grad scoring pass."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from benchmarks._grpo_bench_models import QWEN2_5_VL_3B_TEXT, QWEN2_5_VL_3B_VISION

    dims = QWEN2_5_VL["3B"]
    config = Qwen2_5_VLConfig(text_config=dict(QWEN2_5_VL_3B_TEXT), vision_config=dict(QWEN2_5_VL_3B_VISION),
                              tie_word_embeddings=True)
    out: list[dict[str, Any]] = []
    started = time.time()

    def build() -> Any:
        torch.manual_seed(0)
        with torch.no_grad():
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        return model

    measured, model = measure(build)
    p = sum(x.numel() for x in model.parameters())
    out.append({"model": "Qwen2.5-VL-3B dims, random bf16", "what": "weights", "measured_mib": measured / MIB,
                "predicted_mib": 2.0 * dims.params() / MIB, "ratio": measured / (2.0 * dims.params()),
                "formula": f"2 B x P, P = {dims.params():,} (formula) / {p:,} (built)"})
    ids = torch.randint(20, 150000, (rows, prompt + new_tokens))
    with torch.no_grad():
        measured, _ = measure(lambda: score(model, ids, new_tokens))
    tokens = rows * (prompt + new_tokens)
    transient = 2.0 * (3 * dims.intermediate + 4 * dims.hidden) * tokens
    logits = 2.0 * rows * (new_tokens + 1) * dims.vocab + 4.0 * new_tokens * dims.vocab
    out.append({"model": "Qwen2.5-VL-3B dims, random bf16", "what": f"no-grad scoring pass, {rows} rows x "
                f"{prompt + new_tokens} tokens", "measured_mib": measured / MIB,
                "predicted_mib": (transient + logits) / MIB, "ratio": measured / (transient + logits),
                "formula": "2 B x (3I + 4h) x tokens (one layer's transients) + bf16 logits + one fp32 row"})
    out[-1]["wall_s_including_build"] = time.time() - started
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=256, help="tokens per row (prompt + completion)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--real-3b", action="store_true", help="also the 3B architecture in bf16 (about 8 GB, minutes)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "memory_check.json"))
    args = ap.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   HF_HUB_OFFLINE="1")
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.memory_check", *sys.argv[1:]], env)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows: list[dict[str, Any]] = []
    build_from_config(SHAPES[0], torch.float32)  # one-time allocations of a first build stay out of the figures
    for shape in SHAPES:
        rows += check_shape(shape, args.rows, args.length, args.new_tokens)
        gc.collect()
    if args.real_3b:
        rows += check_real_3b()
    lines = ["| model | what | measured MiB | formula MiB | measured / formula | formula |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['what']} | {r['measured_mib']:.1f} | {r['predicted_mib']:.1f} "
                     f"| {r['ratio']:.2f} | {r['formula']} |")
    table = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv), "rows": rows,
                               "table_markdown": table, "torch": torch.__version__}, indent=1))
    print(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
