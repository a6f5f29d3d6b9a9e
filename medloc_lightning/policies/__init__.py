"""Policies: what samples boxes for the GRPO module (Qwen2.5-VL, or the fast BoxPolicy)."""
from medloc_lightning.policies.base import GroundingPolicy, Record, Rollout, gt_boxes

__all__ = ["GroundingPolicy", "Record", "Rollout", "gt_boxes"]
