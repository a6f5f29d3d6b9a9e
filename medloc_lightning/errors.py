"""The errors medloc raises when it detects a user's mistake: a bad file, a bad setting, an unusable checkpoint.

`medloc` and `medloc-data` end such an error with one ``PROG: error: ...`` line (`medloc_lightning.user_errors`).
Each is also a ``ValueError`` (``FileNotFoundError`` for what is missing), so code that caught those keeps working.
"""
from __future__ import annotations


class MedlocError(Exception):
    """A mistake in what the user gave medloc; its message names the file, line, field or flag to fix."""


class ConfigError(MedlocError, ValueError):
    """A setting (constructor argument, config key, command-line flag) with a value medloc cannot use."""


class DataError(MedlocError, ValueError):
    """A record file, image or mask that is malformed, unreadable or inconsistent."""


class CheckpointError(MedlocError, ValueError):
    """A checkpoint or model folder that is missing, truncated, refused or made for another configuration."""


class MissingFileError(MedlocError, FileNotFoundError):
    """A file or folder the user named that does not exist."""
