"""Suite-wide settings: one torch thread (a busy 2-core box runs 50-100x slower with two), no network."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests call the CLI with ``args=``; pytest's own options left in sys.argv would make LightningCLI warn."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-weight Qwen2.5-VL folder, built offline once per test session."""
    from medloc_lightning.policies.qwen.tiny import tiny_qwen_path

    return str(tiny_qwen_path(tmp_path_factory.mktemp("tiny-qwen")))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic grounding set (mixed modalities, 64 px): train/val/test JSONL + images."""
    from medloc_lightning.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, n=30, seed=0, modality="mixed", size=64)
    return str(root)


@pytest.fixture(scope="session")
def tiny_qwen_sft_dir(tmp_path_factory: pytest.TempPathFactory, tiny_qwen_dir: str, synth_dir: str) -> str:
    """The tiny model after a short SFT warm start, so its answers hold boxes and GRPO rewards vary."""
    import warnings

    import lightning.pytorch as pl

    from medloc_lightning.data import GroundingDataModule
    from medloc_lightning.module import SFTGroundingModule
    from medloc_lightning.policies.qwen import QwenVLPolicy

    pl.seed_everything(0)
    policy = QwenVLPolicy(tiny_qwen_dir, max_pixels=64 * 64, max_new_tokens=24)
    dm = GroundingDataModule(train_file=f"{synth_dir}/train.jsonl", batch_size=4, seed=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=120, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(SFTGroundingModule(policy, learning_rate=1e-2), dm)
    out = tmp_path_factory.mktemp("tiny-qwen-sft")
    policy.export(str(out))
    return str(out)
