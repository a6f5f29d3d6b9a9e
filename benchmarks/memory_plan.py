"""GPU memory of a GRPO step at real size, on paper: Qwen2.5-VL 3B/7B/32B x full/LoRA/QLoRA x DDP/FSDP/FSDP2.

Every term is a closed formula in the published model dimensions and the recipe's workload; docs/memory.md
shows them with the arithmetic, and ``benchmarks/memory_check.py`` checks the same formulas (fp32 variant)
against peak RSS measured on CPU. Bytes per GPU; GiB = 2**30 bytes.

Run: python -m benchmarks.memory_plan [--gpus 4] [--gpu-gib 80] [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

GIB = 2**30


@dataclass(frozen=True)
class ModelDims:
    """Published ``config.json`` dimensions of a Qwen2.5-VL checkpoint."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    vision_hidden: int = 1280
    vision_depth: int = 32
    vision_intermediate: int = 3420
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        """One decoder layer: q/k/v (with bias), o, gate/up/down, two RMSNorms."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h

    def text_params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params() + self.hidden

    def vision_params(self) -> int:
        """Patch embedding, blocks (qkv, proj, gated MLP, with biases; two RMSNorms) and the patch merger."""
        v, i, m = self.vision_hidden, self.vision_intermediate, self.vision_hidden * self.merge ** 2
        patch = 3 * self.temporal_patch * self.patch ** 2 * v
        block = (v * 3 * v + 3 * v) + (v * v + v) + 2 * (v * i + i) + (i * v + v) + 2 * v
        merger = v + (m * m + m) + (m * self.hidden + self.hidden)
        return patch + self.vision_depth * block + merger

    def params(self) -> int:
        return self.text_params() + self.vision_params()

    def linear_params(self) -> int:
        """Weights of the Linear layers bitsandbytes quantizes (all but lm_head; embeddings are no Linear)."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        text = self.layers * (2 * h * h + 2 * h * kv + 3 * h * i)
        v, vi, m = self.vision_hidden, self.vision_intermediate, self.vision_hidden * self.merge ** 2
        vision = self.vision_depth * (4 * v * v + 3 * v * vi) + m * m + m * self.hidden
        return text + vision

    def lora_params(self, r: int) -> int:
        """LoRA rank ``r`` on q/k/v/o of every decoder layer (the vision tower excluded)."""
        h, kv = self.hidden, self.kv_dim
        return self.layers * r * ((h + h) + 2 * (h + kv) + (h + h))


QWEN2_5_VL = {
    "3B": ModelDims("Qwen2.5-VL-3B", hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008,
                    vocab=151936, tied=True),
    "7B": ModelDims("Qwen2.5-VL-7B", hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944,
                    vocab=152064, tied=False),
    "32B": ModelDims("Qwen2.5-VL-32B", hidden=5120, layers=64, heads=40, kv_heads=8, intermediate=27648,
                     vocab=152064, tied=False, vision_intermediate=3456),
}


@dataclass(frozen=True)
class Workload:
    """What one GPU runs per step (the 3B recipe's values by default)."""

    prompts: int = 2
    """Prompts per GPU per step (``data.batch_size``)."""
    generations: int = 8
    image_tokens: int = 1280
    """``max_pixels`` / 28**2: 1 003 520 px -> 1280 visual tokens."""
    text_tokens: int = 60
    """Chat scaffolding + query around the image (about 60 with Qwen's tokenizer)."""
    new_tokens: int = 256
    micro_batch: int = 4
    """Rows per backward chunk (``micro_batch_size``)."""
    logprob_batch: int = 4
    """Rows per no-grad scoring chunk (``logprob_batch_size``)."""
    checkpointing: bool = True
    prefill_once: bool = True

    @property
    def prompt_tokens(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def row_tokens(self) -> int:
        return self.prompt_tokens + self.new_tokens


@dataclass(frozen=True)
class Setup:
    """Fine-tuning method, sharding and precision."""

    method: str = "full"
    """``full`` (fp32 master weights, bf16 autocast), ``lora`` (bf16 base) or ``qlora`` (NF4 base)."""
    strategy: str = "ddp"
    """``ddp``, ``fsdp`` (FSDP1) or ``fsdp2``: fsdp/fsdp2 shard weights, gradients and AdamW state."""
    gpus: int = 4
    beta: float = 0.4
    reference_bytes: int = 4
    """Bytes per parameter of the full-fine-tuning reference copy (4: fp32, 2: bf16); it is never sharded."""
    lora_r: int = 64
    freeze_vision: bool = True
    bucket_view: bool = False
    """DDP ``gradient_as_bucket_view``: False (torch's default) keeps a second copy of the gradients."""
    summon_for_generation: bool = False
    """FSDP: unshard the whole model once per rollout (fp32 for full fine-tuning) instead of per layer."""

    @property
    def sharded(self) -> bool:
        return self.strategy in ("fsdp", "fsdp2")


def _train_params(dims: ModelDims, setup: Setup) -> int:
    if setup.method == "full":
        return dims.params() - (dims.vision_params() if setup.freeze_vision else 0)
    return dims.lora_params(setup.lora_r)


def weight_bytes(dims: ModelDims, setup: Setup) -> float:
    """Policy weights: fp32 master copy (full), bf16 base (LoRA), NF4 linears + bf16 rest (QLoRA); adapters fp32."""
    if setup.method == "full":
        total = 4.0 * dims.params()
    elif setup.method == "lora":
        total = 2.0 * dims.params() + 4.0 * dims.lora_params(setup.lora_r)
    elif setup.method == "qlora":
        # NF4: 4 bits per weight + double-quantized absmax (8 bits per 64 weights + fp32 per 256 blocks).
        linear = dims.linear_params()
        total = linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + 2.0 * (dims.params() - linear) \
            + 4.0 * dims.lora_params(setup.lora_r)
    else:
        raise ValueError(f"method must be full, lora or qlora, got {setup.method!r}")
    return total / setup.gpus if setup.sharded else total


def activation_bytes_per_token_layer(dims: ModelDims, precision: str = "bf16-mixed", lora_dropout: bool = False
                                     ) -> float:
    """Bytes one decoder layer keeps for backward, per token (counted tensor by tensor on CPU).

    fp32: 8h + 2kv + 4I words: the RMSNorm inputs and outputs (2 x 2h), the q/k/v input (h), attention's q, k,
    v and output (2h + 2kv; the rotary products keep only cos/sin), the MLP input (h) and its gate, SiLU, up and
    product outputs (4I). bf16-mixed: the residual stream and RMSNorm internals stay fp32 (4 x 2h x 4 B), and
    autocast casts the input once per Linear call (q, k, v: 3 x 2h B; gate, up: 2 x 2h B): 30h + 4kv + 8I
    bytes. LoRA with dropout adds about 2h (bf16-mixed) or 8h (fp32) bytes net: dropout copies and masks on
    q, k, v, o, less the inputs frozen Linears no longer keep.
    """
    h, kv, i = dims.hidden, dims.kv_dim, dims.intermediate
    if precision == "fp32":
        return 4.0 * (8 * h + 2 * kv + 4 * i) + (8.0 * h if lora_dropout else 0.0)
    return 30.0 * h + 4 * kv + 8 * i + (2.0 * h if lora_dropout else 0.0)


def estimate(dims: ModelDims, work: Workload, setup: Setup) -> dict[str, Any]:
    """Every term in bytes per GPU, the peak of each phase (generation, reference pass, training pass, optimizer
    step), the overall peak, and the arithmetic as text."""
    p, v, h, layers, vocab = dims.params(), dims.vision_params(), dims.hidden, dims.layers, dims.vocab
    train = _train_params(dims, setup)
    shard = setup.gpus if setup.sharded else 1
    t: dict[str, float] = {}
    why: dict[str, str] = {}
    t["weights"] = weight_bytes(dims, setup)
    why["weights"] = {"full": "4 B x P", "lora": "2 B x P + 4 B x P_lora", "qlora": "~0.52 B x P_linear + 2 B x rest"}[
        setup.method] + (f" / {shard}" if shard > 1 else "")
    t["grads"] = 4.0 * train / shard
    why["grads"] = "4 B x P_train" + (f" / {shard}" if shard > 1 else "")
    t["ddp_buckets"] = 4.0 * train if setup.strategy == "ddp" and not setup.bucket_view else 0.0
    why["ddp_buckets"] = "4 B x P_train (DDP without gradient_as_bucket_view)" if t["ddp_buckets"] else "-"
    t["adamw"] = 8.0 * train / shard
    why["adamw"] = "8 B x P_train (fp32 exp_avg + exp_avg_sq)" + (f" / {shard}" if shard > 1 else "")
    needs_copy = setup.beta > 0 and setup.method == "full"
    t["reference"] = float(setup.reference_bytes * p) if needs_copy else 0.0
    why["reference"] = (f"{setup.reference_bytes} B x P (unsharded copy)" if needs_copy else
                        "0 (adapters disabled)" if setup.beta > 0 else "0 (beta = 0)")
    # FSDP: gathered units during compute (bf16 under mixed precision): root (embeddings, lm_head) + 2 layers.
    gathered = 0.0
    if setup.sharded:
        root = vocab * h * (1 if dims.tied else 2)
        gathered = 2.0 * (root + 2 * dims.layer_params())
    t["fsdp_gathered"] = gathered
    why["fsdp_gathered"] = "2 B x (embeddings + lm_head + 2 layers), unsharded during compute" if gathered else "-"
    # Generation: KV cache of B*G rows, plus the prefill's largest transient (MLP intermediates).
    rows = work.prompts * work.generations
    kv_token = 2.0 * 2 * layers * dims.kv_dim  # k and v, bf16
    t["kv_cache"] = kv_token * rows * work.row_tokens
    why["kv_cache"] = f"2 (k,v) x 2 B x {layers} layers x {dims.kv_dim} x {rows} rows x {work.row_tokens} tokens"
    prefill_rows = work.prompts if work.prefill_once and not setup.sharded else rows
    per_token_transient = 2.0 * (3 * dims.intermediate + 4 * h)
    t["prefill_transient"] = per_token_transient * prefill_rows * work.prompt_tokens + 16.0 * rows * vocab
    why["prefill_transient"] = (f"2 B x (3 I + 4 h) x {prefill_rows} rows x {work.prompt_tokens} prompt tokens "
                                f"({'prefill once' if prefill_rows == work.prompts else 'plain prefill'}) + "
                                f"4 x 4 B x {rows} rows x {vocab} (step logits, scores, probabilities)")
    t["summon"] = (4.0 if setup.method == "full" else 2.0) * p * (1 - 1 / shard) \
        if setup.sharded and setup.summon_for_generation else 0.0
    why["summon"] = "the rest of the full model, unsharded for the rollout" if t["summon"] else "-"
    # Reference / no-grad scoring pass.
    ref_rows = work.logprob_batch
    ref_tokens = (work.prompt_tokens + ref_rows * work.new_tokens if work.prefill_once and not setup.sharded
                  else ref_rows * work.row_tokens)
    t["nograd_transient"] = per_token_transient * ref_tokens + 2.0 * ref_rows * (work.new_tokens + 1) * vocab \
        + 4.0 * work.new_tokens * vocab
    why["nograd_transient"] = (f"2 B x (3 I + 4 h) x {ref_tokens} tokens + bf16 logits {ref_rows} x "
                               f"{work.new_tokens + 1} x {vocab} + one fp32 row")
    # Training pass: activations of one micro-batch and its logits.
    mb = work.micro_batch
    tokens = mb * work.row_tokens
    per_layer = activation_bytes_per_token_layer(dims, "bf16-mixed", lora_dropout=setup.method != "full")
    if work.checkpointing:
        t["activations"] = 4.0 * h * layers * tokens + per_layer * tokens
        why["activations"] = (f"checkpointed: 4 B x h x {layers} layers x {tokens} tokens + one layer's "
                              f"{per_layer / 1024:.0f} KiB/token x {tokens}")
    else:
        t["activations"] = per_layer * layers * tokens
        why["activations"] = f"{per_layer / 1024:.0f} KiB/token/layer x {layers} layers x {tokens} tokens"
    # bf16-mixed full fine-tune: Lightning's autocast runs with cache_enabled=False, so every Linear casts its
    # fp32 weight per call and keeps the bf16 copy for backward: one layer at a time under checkpointing (plus
    # lm_head, outside the checkpointed blocks), every trained weight without it.
    if setup.method == "full":
        head = vocab * h
        t["autocast_copies"] = 2.0 * ((dims.layer_params() + head) if work.checkpointing else train)
        why["autocast_copies"] = ("2 B x (one layer + lm_head): bf16 weight copies kept for backward"
                                  if work.checkpointing else "2 B x P_train: bf16 weight copies kept for backward")
    else:
        t["autocast_copies"] = 0.0
        why["autocast_copies"] = "- (bf16 or 4-bit base, small fp32 adapters)"
    t["logits"] = 2.0 * mb * (work.new_tokens + 1) * vocab + 4.0 * (mb + 1) * work.new_tokens * vocab
    why["logits"] = (f"bf16 logits (or their grad) 2 B x {mb} x {work.new_tokens + 1} x {vocab} + fp32 copies "
                     f"log-softmax keeps 4 B x {mb} x {work.new_tokens} x {vocab} + one row's fp32 grad")
    t["adamw_step"] = 4.0 * train / shard
    why["adamw_step"] = "4 B x P_train: foreach AdamW's sqrt(exp_avg_sq) temporaries (torch's CUDA default)" + (
        f" / {shard}" if shard > 1 else "")
    t["context"] = 1.5 * GIB
    why["context"] = "CUDA context, NCCL buffers, allocator slack (assumed)"
    static = t["weights"] + t["adamw"] + t["reference"] + t["ddp_buckets"] + t["context"]
    phases = {
        "generation": static + t["kv_cache"] + t["prefill_transient"] + t["summon"] + t["fsdp_gathered"],
        "reference": static + t["nograd_transient"] + t["fsdp_gathered"],
        "training": static + t["grads"] + t["activations"] + t["autocast_copies"] + t["logits"]
        + t["fsdp_gathered"],
        "optimizer": static + t["grads"] + t["adamw_step"],
    }
    return {"model": dims.name, "setup": dataclasses.asdict(setup), "workload": dataclasses.asdict(work),
            "params": p, "vision_params": v, "trainable_params": train, "terms": t, "why": why, "phases": phases,
            "peak": max(phases.values()), "peak_phase": max(phases, key=phases.get)}


def gib(x: float) -> str:
    return f"{x / GIB:.1f}"


TERMS = ("weights", "grads", "ddp_buckets", "adamw", "adamw_step", "reference", "fsdp_gathered", "kv_cache",
         "prefill_transient", "summon", "nograd_transient", "activations", "autocast_copies", "logits", "context")


def table(rows: list[dict[str, Any]], gpu_gib: float) -> str:
    """One markdown row per configuration: every term and the peak, in GiB."""
    head = ("| model | method | strategy | " + " | ".join(TERMS) + " | peak (phase) | fits "
            f"{gpu_gib:.0f} GiB with 10% margin |")
    lines = [head, "|" + "---|" * (len(TERMS) + 5)]
    for r in rows:
        s = r["setup"]
        fits = r["peak"] <= 0.9 * gpu_gib * GIB
        lines.append(f"| {r['model'].split('-')[-1]} | {s['method']} | {s['strategy']} | "
                     + " | ".join(gib(r["terms"][k]) for k in TERMS)
                     + f" | **{gib(r['peak'])}** ({r['peak_phase']}) | {'yes' if fits else '**no**'} |")
    return "\n".join(lines)


def grid(gpus: int, **overrides: Any) -> list[dict[str, Any]]:
    """Every model x method x strategy with the recipe's workload (QLoRA only under DDP: bitsandbytes 4-bit
    weights need ``bnb_4bit_quant_storage`` for FSDP, which our loader does not set)."""
    out = []
    for dims in QWEN2_5_VL.values():
        for method in ("full", "lora", "qlora"):
            for strategy in ("ddp", "fsdp", "fsdp2"):
                if method == "qlora" and strategy != "ddp":
                    continue
                setup = Setup(method=method, strategy=strategy, gpus=gpus, **overrides)
                out.append(estimate(dims, Workload(), setup))
    return out


SHIPPED = (
    ("3B recipe on DDP with an fp32 reference (for comparison)", "3B", Setup("full", "ddp", reference_bytes=4)),
    ("configs/medloc_qwen2_5_vl_3b.yaml", "3B", Setup("full", "fsdp2", reference_bytes=2, summon_for_generation=True)),
    ("+ variants/lora.yaml", "3B", Setup("lora", "fsdp2", summon_for_generation=True)),
    ("+ variants/qlora_4bit.yaml", "3B", Setup("qlora", "ddp")),
    ("+ variants/qwen2_5_vl_7b.yaml", "7B", Setup("full", "fsdp2", reference_bytes=2)),
    ("+ variants/qwen2_5_vl_7b.yaml + lora.yaml", "7B", Setup("lora", "fsdp2")),
    ("+ variants/qwen2_5_vl_32b.yaml", "32B", Setup("lora", "fsdp2")),
    ("+ variants/qwen2_5_vl_32b.yaml + qlora_4bit.yaml", "32B", Setup("qlora", "ddp")),
)
"""The shipped recipes (4 GPUs, the 3B recipe's workload), and for comparison the 3B recipe's full fine-tune on
DDP with an fp32 reference copy (no sharding, no bf16 reference)."""


def shipped_table(gpus: int, gpu_gib: float) -> str:
    lines = ["| recipe | model | method, strategy | generation | reference pass | training pass | optimizer step "
             f"| peak | share of {gpu_gib:.0f} GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, model, setup in SHIPPED:
        r = estimate(QWEN2_5_VL[model], Workload(), dataclasses.replace(setup, gpus=gpus))
        ph = r["phases"]
        lines.append(f"| {name} | {model} | {setup.method}, {setup.strategy}"
                     f"{' (one unshard per rollout)' if setup.summon_for_generation else ''} | {gib(ph['generation'])} "
                     f"| {gib(ph['reference'])} | {gib(ph['training'])} | {gib(ph['optimizer'])} "
                     f"| **{gib(r['peak'])}** | {100 * r['peak'] / (gpu_gib * GIB):.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--json", action="store_true", help="print every estimate as JSON instead of tables")
    args = ap.parse_args(argv)
    fp32_reference = grid(args.gpus, reference_bytes=4)
    bf16_reference = grid(args.gpus, reference_bytes=2)
    if args.json:
        print(json.dumps({"fp32_reference": fp32_reference, "bf16_reference": bf16_reference}, indent=1))
        return
    for dims in QWEN2_5_VL.values():
        lora = dims.lora_params(64)
        print(f"{dims.name}: P = {dims.params() / 1e9:.3f} B (vision {dims.vision_params() / 1e9:.3f} B, "
              f"NF4-quantized linears {dims.linear_params() / 1e9:.3f} B, LoRA r=64 {lora / 1e6:.1f} M)")
    print(f"\nShipped recipes (GiB per GPU, {args.gpus} GPUs):\n")
    print(shipped_table(args.gpus, args.gpu_gib))
    print(f"\nEvery configuration, fp32 reference copy (GiB per GPU, {args.gpus} GPUs):\n")
    print(table(fp32_reference, args.gpu_gib))
    print(f"\nEvery configuration, bf16 reference copy (GiB per GPU, {args.gpus} GPUs):\n")
    print(table(bf16_reference, args.gpu_gib))


if __name__ == "__main__":
    main()
