"""Lightning strategies configured for Qwen2.5-VL, so YAML configs need no Python class sets."""
from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy


class QwenFSDPStrategy(FSDPStrategy):
    """FSDP (1) that auto-wraps each Qwen2.5-VL decoder layer and vision block, with the matching
    activation-checkpointing policy (Lightning's advice: the same classes for both).

    Use it instead of the policy's ``gradient_checkpointing`` switch, not together with it. Gradient
    clipping is done by the GRPO module through FSDP's own ``clip_grad_norm_``.
    """

    def __init__(self, activation_checkpointing: bool = True, sharding_strategy: str = "FULL_SHARD",
                 state_dict_type: str = "full", cpu_offload: bool = False, **kwargs: Any) -> None:
        from medloc_lightning.policies.qwen.loading import wrap_classes

        classes = set(wrap_classes())
        super().__init__(
            auto_wrap_policy=classes,
            activation_checkpointing_policy=classes if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            **kwargs,
        )
