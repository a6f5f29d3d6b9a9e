"""The product path end to end on CPU: tiny Qwen2.5-VL + synthetic data + curriculum, in real Trainers."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.callbacks import SampleLoggingCallback
from medloc_lightning.curriculum import ThresholdCurriculum
from medloc_lightning.data import GroundingDataModule
from medloc_lightning.module import GRPOGroundingModule, SFTGroundingModule
from medloc_lightning.policies.qwen import QwenVLPolicy
from medloc_lightning.rewards import GroundingReward


def data(synth_dir, batch_size=2):
    root = Path(synth_dir)
    return GroundingDataModule(train_file=str(root / "train.jsonl"), val_file=str(root / "val.jsonl"),
                               test_file=str(root / "test.jsonl"), batch_size=batch_size, seed=0)


def grpo(tiny_qwen_dir, **kw):
    policy = QwenVLPolicy(tiny_qwen_dir, max_pixels=64 * 64, max_new_tokens=24, lora_r=kw.pop("lora_r", 8),
                          lora_dropout=0.1)
    kw.setdefault("num_generations", 3)
    return GRPOGroundingModule(policy, learning_rate=1e-3, beta=kw.pop("beta", 0.04), **kw)


def trainer(root, steps, callbacks=(), **kw):
    kw.setdefault("logger", False)
    return pl.Trainer(accelerator="cpu", max_steps=steps, default_root_dir=root, callbacks=list(callbacks),
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      enable_checkpointing=kw.pop("enable_checkpointing", False), **kw)


def test_grpo_lora_with_curriculum_logs_to_tensorboard(tmp_path, tiny_qwen_dir, synth_dir):
    pl.seed_everything(0)
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=2))
    module = grpo(tiny_qwen_dir)
    logger = TensorBoardLogger(tmp_path, name="tb")
    t = trainer(tmp_path, 3, [cb, SampleLoggingCallback(every_n_steps=1)], logger=logger, log_every_n_steps=1, limit_val_batches=1, val_check_interval=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(module, data(synth_dir))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for key in ("curriculum/tau", "curriculum/hit_rate", "train/reward", "train/frac_reward_zero_std",
                "train/kl", "train/completion_length", "time/rollout_s", "val/acc@0.5", "val/pseudo_map"):
        assert key in scalars, key
    assert any(tag.startswith("train_samples/") for tag in events.Tags()["images"])
    assert any(tag.startswith("train_samples/") for tag in events.Tags()["tensors"])  # the text samples
    assert any(tag.startswith("val_samples/") for tag in events.Tags()["images"])


def _run(root, model_dir, synth_dir, steps, ckpt_path=None):
    pl.seed_everything(0)
    # a hit-rate floor of 0 lets tau move whatever the tiny model scores (to exercise its state)
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=2, min_hit_rate=0.0, checks=("accuracy",)))
    saver = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    module = grpo(model_dir, temperature=1.0, reward=GroundingReward(kind="iou"))  # dense, so groups vary
    t = trainer(root, steps, [cb, saver], enable_checkpointing=True, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(module, data(synth_dir), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return t, module, cb


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, tiny_qwen_sft_dir, synth_dir):
    full_t, full, full_cb = _run(tmp_path / "full", tiny_qwen_sft_dir, synth_dir, 12)
    ckpt = tmp_path / "full" / "ckpt" / "step=6.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert all("lora_" in k for k in state["state_dict"])  # LoRA runs save only the adapter
    res_t, resumed, res_cb = _run(tmp_path / "resumed", tiny_qwen_sft_dir, synth_dir, 12, ckpt_path=ckpt)
    assert full.counts["zero_std_groups"] < 12 * 2  # rewards varied, so the weights really moved
    lora_b = [p for n, p in full.named_parameters() if "lora_B" in n]
    assert any(torch.count_nonzero(p) for p in lora_b)
    assert res_t.global_step == full_t.global_step == 12
    assert full_cb.schedule.num_raises >= 1
    assert res_cb.schedule.state_dict() == full_cb.schedule.state_dict()
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    opt_full, opt_res = full_t.optimizers[0].state_dict(), res_t.optimizers[0].state_dict()
    for k in opt_full["state"]:
        assert torch.equal(opt_full["state"][k]["exp_avg"], opt_res["state"][k]["exp_avg"])


def test_sft_then_export_and_reload(tmp_path, tiny_qwen_dir, synth_dir):
    pl.seed_everything(0)
    policy = QwenVLPolicy(tiny_qwen_dir, max_pixels=64 * 64, max_new_tokens=24)
    module = SFTGroundingModule(policy, learning_rate=3e-3)
    t = trainer(tmp_path, 4, limit_val_batches=1, val_check_interval=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(module, data(synth_dir))
    assert "train/sft_loss" in t.logged_metrics and "val/miou" in t.logged_metrics
    module.export(str(tmp_path / "export"))
    reloaded = QwenVLPolicy(str(tmp_path / "export"), max_pixels=64 * 64, max_new_tokens=24)
    reloaded.configure()
    dm = data(synth_dir)
    dm.setup("test")
    batch = [dm.datasets["test"][i] for i in range(2)]
    policy.eval(), reloaded.eval()
    texts_a, boxes_a = policy.predict(batch)
    texts_b, boxes_b = reloaded.predict(batch)
    assert texts_a == texts_b and torch.equal(torch.nan_to_num(boxes_a, -1), torch.nan_to_num(boxes_b, -1))
