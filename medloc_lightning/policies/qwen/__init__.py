"""Qwen2.5-VL (any size) as a grounding policy: `QwenVLPolicy` and the helpers it is built from."""
from medloc_lightning.policies.qwen.policy import QwenRolloutState, QwenVLPolicy

__all__ = ["QwenRolloutState", "QwenVLPolicy"]
