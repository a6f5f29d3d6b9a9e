"""Adapters for other training libraries: `trl` (a TRL GRPOTrainer reward function)."""
