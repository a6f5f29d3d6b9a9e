"""QLoRA on CPU: 4-bit (nf4) and 8-bit bitsandbytes weights with LoRA adapters, a full update cycle."""
from __future__ import annotations

import pytest
import torch
from qwen_helpers import make_records

from medloc_lightning.policies.qwen import QwenVLPolicy

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_qlora_sample_logprobs_backward_step(tiny_qwen_dir: str, quantization: str) -> None:
    import bitsandbytes as bnb

    policy = QwenVLPolicy(tiny_qwen_dir, max_pixels=224 * 224, max_new_tokens=8, lora_r=4,
                          quantization=quantization)
    policy.configure()
    quantized = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    assert any(isinstance(m, quantized) for m in policy.model.modules())
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    policy.enable_reference()
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=5e-2)
    batch = make_records((64, 48), (40, 90))
    torch.manual_seed(0)
    for _ in range(2):  # the second round proves generation left the weights trainable
        rollout = policy.sample(batch, 2, 0.9)
        ref = policy.logprobs(rollout, reference=True)
        logps = policy.logprobs(rollout)
        loss = -(logps * rollout.mask).sum() / rollout.mask.sum()
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())
        optimizer.step()
        optimizer.zero_grad()
        # Lightning validates in eval mode. bnb repacks 4-bit weights for inference (on AVX512-BF16 CPUs)
        # when a quantized layer runs with training=False, and the next backward then fails: record that
        # every quantized layer still runs in train mode while predicting from an eval-mode policy.
        seen: list[bool] = []
        hooks = [m.register_forward_pre_hook(lambda mod, _args: seen.append(mod.training))
                 for m in policy.model.modules() if isinstance(m, quantized)]
        policy.eval()
        texts, boxes = policy.predict(batch)
        policy.train()
        for hook in hooks:
            hook.remove()
        assert seen and all(seen)
        assert len(texts) == 2 and boxes.shape == (2, 4)
    assert torch.isfinite(ref).all()
    with torch.no_grad():
        moved = policy.logprobs(rollout)
    assert (moved - policy.logprobs(rollout, reference=True))[rollout.mask.bool()].abs().max() > 1e-4
