"""benchmarks/memory_plan.py: its parameter counts and activation formula against the real modules."""
from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks import memory_plan as plan


def config_of(dims):
    from transformers import Qwen2_5_VLConfig

    half = dims.head_dim // 2
    text = dict(vocab_size=dims.vocab, hidden_size=dims.hidden, intermediate_size=dims.intermediate,
                num_hidden_layers=dims.layers, num_attention_heads=dims.heads, num_key_value_heads=dims.kv_heads,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]})
    vision = dict(depth=dims.vision_depth, hidden_size=dims.vision_hidden, intermediate_size=dims.vision_intermediate,
                  num_heads=16 if dims.vision_hidden >= 1024 else 2, out_hidden_size=dims.hidden,
                  fullatt_block_indexes=[dims.vision_depth - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=dims.tied)


@pytest.mark.parametrize("name", sorted(plan.QWEN2_5_VL))
def test_parameter_counts_match_the_built_architecture(name: str) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    dims = plan.QWEN2_5_VL[name]
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config_of(dims))
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == dims.params()
    assert sum(p.numel() for n, p in params.items() if ".visual." in f".{n}") == dims.vision_params()
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    assert linear == dims.linear_params()
    if name == "3B":
        assert dims.params() == 3_754_622_976  # the published checkpoint's parameter count


def test_lora_parameter_count_matches_peft() -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from medloc_lightning.policies.qwen.loading import apply_lora, lora_config

    dims = plan.ModelDims("tiny", hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256, vocab=300, tied=False,
                          vision_hidden=64, vision_depth=1, vision_intermediate=128)
    config = lora_config(None, r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                         freeze_vision=True)
    model = apply_lora(Qwen2_5_VLForConditionalGeneration._from_config(config_of(dims)), config)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == dims.lora_params(8)


def saved_bytes_per_token_layer(model, autocast: bool) -> float:
    """Bytes autograd keeps per token and decoder layer: the slope over tokens of the distinct saved storages,
    differenced over the layer count (so embeddings, norms and the head drop out)."""
    def saved(m, tokens: int) -> int:
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            m(input_ids=torch.randint(20, 250, (1, tokens)), use_cache=False, logits_to_keep=1)
        return sum(storages.values())

    per_token = [(saved(m, 300) - saved(m, 100)) / 200 for m in model]
    return per_token[1] - per_token[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
@pytest.mark.parametrize("kv_heads,intermediate", [(2, 512), (4, 768)])
def test_activation_formula_counts_the_tensors_autograd_keeps(precision: str, kv_heads: int, intermediate: int
                                                               ) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    import dataclasses

    dims = plan.ModelDims("tiny", hidden=256, layers=2, heads=4, kv_heads=kv_heads, intermediate=intermediate,
                          vocab=300, tied=False, vision_hidden=64, vision_depth=1, vision_intermediate=128)
    torch.manual_seed(0)
    models = [Qwen2_5_VLForConditionalGeneration._from_config(config_of(dataclasses.replace(dims, layers=n))).train()
              for n in (2, 3)]
    measured = saved_bytes_per_token_layer(models, autocast=precision == "bf16-mixed")
    predicted = plan.activation_bytes_per_token_layer(dims, precision)
    assert measured == pytest.approx(predicted, rel=0.01)
