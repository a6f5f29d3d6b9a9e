"""Checkpoint files: atomic writes, ``weights_only=True`` reads, and the Lightning plugin that does both."""
