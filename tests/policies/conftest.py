"""Session-scoped tiny offline Qwen2.5-VL folders for the policy tests (built once per run)."""
from __future__ import annotations

import pytest
from qwen_helpers import SHORT_CONTEXT

from medloc_lightning.policies.qwen.tiny import tiny_qwen_path


@pytest.fixture(scope="session")
def tiny_qwen_short_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny model whose context is too short for a 224 px prompt."""
    return str(tiny_qwen_path(tmp_path_factory.mktemp("tiny-qwen-short"), max_position_embeddings=SHORT_CONTEXT))
