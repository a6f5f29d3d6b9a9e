"""BoxPolicy: a small CNN + query encoder that samples boxes, the curriculum lab's fast CPU policy."""
from medloc_lightning.policies.box.policy import BoxPolicy

__all__ = ["BoxPolicy"]
