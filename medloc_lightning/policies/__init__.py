"""Policies: what samples boxes for the GRPO module (Qwen2.5-VL, or the fast BoxPolicy)."""
from medloc_lightning.data.records import Record, gt_boxes
from medloc_lightning.policies.base import GroundingPolicy, Rollout
from medloc_lightning.policies.box import BoxPolicy

__all__ = ["BoxPolicy", "GroundingPolicy", "Record", "Rollout", "gt_boxes"]
