"""GroundingDataModule with real Lightning Trainers on CPU: batches, validation errors, shuffling, workers, DDP."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from datatest_helpers import make_image, record, write_jsonl
from PIL import Image
from torch import nn

from medloc_lightning.data import GroundingDataModule, RecordError

N = 12


@pytest.fixture
def data(tmp_path):
    """N grey/RGB images with train/val/test files (relative paths), ids r00..r11."""
    lines = []
    for i in range(N):
        name = f"img/{i:02d}.{'png' if i % 2 else 'jpg'}"
        make_image(tmp_path / name, (24, 16), mode="L" if i % 3 == 0 else "RGB", seed=i)
        lines.append(record(f"r{i:02d}", name, bbox=(1, 2, 10 + i, 12), size=(24, 16), label="les" if i % 2 else None))
    write_jsonl(tmp_path / "train.jsonl", lines)
    write_jsonl(tmp_path / "val.jsonl", lines[:5])
    write_jsonl(tmp_path / "test.jsonl", lines[5:8])
    return tmp_path


def _dm(data, **kw):
    files = {k: str(data / f"{k.split('_')[0]}.jsonl") for k in ("train_file", "val_file", "test_file")}
    return GroundingDataModule(**{**files, **kw})


def _ids(loader):
    return [r["id"] for batch in loader for r in batch]


def test_batches_are_lists_of_records_with_rgb_images(data):
    dm = _dm(data, batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, list) and len(batch) == 5
    for r in batch:
        assert isinstance(r["image"], Image.Image) and r["image"].mode == "RGB" and r["image"].size == (24, 16)
        i = int(r["id"][1:])
        assert r["bbox"] == [1.0, 2.0, float(10 + i), 12.0] and all(isinstance(v, float) for v in r["bbox"])
        assert (r["width"], r["height"]) == (24, 16) and r["query"] == f"the thing {r['id']}"
        assert r["image_path"] == str(data / "img" / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
        assert ("label" in r) == bool(i % 2)
    assert sorted(_ids(dm.val_dataloader())) == [f"r{i:02d}" for i in range(5)]
    dm.setup("test")
    assert _ids(dm.test_dataloader()) == ["r05", "r06", "r07"]
    assert dm.skipped == {"train": 0, "val": 0, "test": 0}


def test_invalid_records_stop_setup_with_file_line_field(data):
    lines = [record(f"x{i}", "img/00.jpg", size=(24, 16), bbox=(5, 5, 1, 1)) for i in range(25)]
    write_jsonl(data / "bad.jsonl", [record("ok", "img/00.jpg", bbox=(1, 2, 10, 12), size=(24, 16)), *lines])
    dm = GroundingDataModule(train_file=str(data / "bad.jsonl"))
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert f"{data / 'bad.jsonl'}:2: bbox: inverted box" in message
    assert f"{data / 'bad.jsonl'}:21: bbox" in message and ":22: bbox" not in message  # first 20 listed
    assert "25 of 26 records are invalid" in message and "... and 5 more" in message


def test_skip_invalid_warns_and_counts(data):
    write_jsonl(data / "bad.jsonl", [record("ok", "img/00.jpg", bbox=(1, 2, 10, 12), size=(24, 16)), "{broken",
                                     record("gone", "img/nope.png", bbox=(1, 2, 10, 12), size=(24, 16))])
    dm = GroundingDataModule(train_file=str(data / "bad.jsonl"), skip_invalid=True)
    with pytest.warns(UserWarning, match="2 of 3 records are invalid"):
        dm.setup("fit")
    assert dm.skipped["train"] == 2
    assert [(p.line, p.field) for p in dm.problems["train"]] == [(2, "json"), (3, "image")]
    assert _ids(dm.train_dataloader()) == ["ok"]


def test_images_are_checked_again_at_load_time(data):
    (data / "img" / "01.png").write_bytes((data / "img" / "01.png").read_bytes()[:60])  # truncate
    make_image(data / "img" / "02.jpg", (25, 16))  # wrong width
    dm = GroundingDataModule(train_file=str(data / "train.jsonl"), check_images=False)
    dm.setup("fit")  # metadata only: passes
    ds = dm.datasets["train"]
    with pytest.raises(RecordError, match=rf"^{data / 'train.jsonl'}:2: image: cannot decode"):
        ds[1]
    with pytest.raises(RecordError, match=rf"^{data / 'train.jsonl'}:3: width: is 24 but .* is 25 px wide"):
        ds[2]
    with pytest.raises(ValueError, match=":2: image: cannot decode"):
        GroundingDataModule(train_file=str(data / "train.jsonl")).setup("fit")  # the default check catches it early
    (data / "img" / "04.jpg").unlink()
    from medloc_lightning.data.schema import read_records

    found = {p.line: str(p) for p in read_records(str(data / "train.jsonl"))[1]}  # what `validate` says
    assert sorted(found) == [2, 3, 5]
    for index in (1, 2, 4):  # the loader words each problem the same way
        with pytest.raises(RecordError) as err:
            ds[index]
        assert str(err.value) == found[index + 1]


def test_shuffle_is_deterministic_by_seed_and_epoch(data):
    def order(seed, epoch):
        dm = _dm(data, seed=seed)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return _ids(loader)

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == [f"r{i:02d}" for i in range(N)]
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    unshuffled = _dm(data, shuffle=False).train_dataloader()
    assert _ids(unshuffled) == [f"r{i:02d}" for i in range(N)]


def test_rank_shards_are_disjoint_and_interleave_to_the_global_order(data):
    dm = _dm(data, seed=3)
    whole = list(dm.train_sampler(1, 0))
    shards = [list(dm.train_sampler(3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(N))
    assert [shards[k % 3][k // 3] for k in range(N)] == whole


class Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[str]] = {}
        self.val_seen: list[str] = []

    def training_step(self, batch, batch_idx):
        assert all(isinstance(r["image"], Image.Image) for r in batch)
        self.seen.setdefault(self.current_epoch, []).extend(r["id"] for r in batch)
        return (self.w ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.val_seen.extend(r["id"] for r in batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm, epochs=2):
    module = Recorder()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    return module


def test_trainer_reshuffles_each_epoch_reproducibly(data):
    first = _fit(_dm(data, seed=4, batch_size=3))
    again = _fit(_dm(data, seed=4, batch_size=3))
    assert first.seen == again.seen
    assert first.seen[0] != first.seen[1] and sorted(first.seen[0]) == sorted(first.seen[1])
    assert first.val_seen == [f"r{i:02d}" for i in range(5)] * 2
    dm = _dm(data, seed=4)
    sampler = dm.train_sampler()
    sampler.set_epoch(1)
    assert first.seen[1] == [f"r{i:02d}" for i in sampler]


def test_fit_without_val_file_and_worker_processes(data):
    dm = GroundingDataModule(train_file=str(data / "train.jsonl"), batch_size=4, num_workers=2, seed=1)
    module = _fit(dm, epochs=1)
    reference = _dm(data, seed=1).train_dataloader()
    reference.sampler.set_epoch(0)
    assert module.seen[0] == _ids(reference) and module.val_seen == []


def test_missing_splits_and_files_are_clear_errors(data):
    dm = GroundingDataModule(train_file=str(data / "train.jsonl"))
    with pytest.raises(ValueError, match="test_file is not set"):
        dm.test_dataloader()
    with pytest.raises(FileNotFoundError, match="val_file: record file not found"):
        GroundingDataModule(val_file=str(data / "nope.jsonl")).setup("validate")


def test_max_records_and_empty_files(data):
    dm = _dm(data, max_records=4)
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [4, 4, 3]
    write_jsonl(data / "empty.jsonl", [])
    for split in ("train", "predict"):  # an empty file is an error: `fit` would otherwise end with "no batches", exit 0
        with pytest.raises(ValueError, match=r"empty.jsonl:0: file: holds no records"):
            GroundingDataModule(**{f"{split}_file": str(data / "empty.jsonl")}).setup()
    write_jsonl(data / "bad.jsonl", [{"id": "x"}])
    with pytest.raises(ValueError, match=r"train_file .*bad.jsonl: no valid record \(1 invalid skipped\)"):
        GroundingDataModule(train_file=str(data / "bad.jsonl"), skip_invalid=True).setup()


def test_no_hf_cache_or_temp_files_are_left_behind(data, monkeypatch):
    tmp = data / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    _dm(data).setup()
    assert os.listdir(tmp) == []


def test_works_as_a_jsonargparse_class(data):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(GroundingDataModule, "data")
    cfg = parser.parse_args(["--data.train_file", str(data / "train.jsonl"), "--data.batch_size", "3",
                             "--data.skip_invalid", "true"])
    dm = GroundingDataModule(**cfg.data)
    assert dm.batch_size == 3 and dm.skip_invalid is True


class RankRecorder(Recorder):
    """Each rank writes what it saw (a forked rank's attributes never come back to the parent)."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out

    def on_train_end(self) -> None:
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.slow
def test_ddp_two_ranks_get_disjoint_shards_of_the_seeded_order(data, tmp_path, monkeypatch):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    # the fork launcher writes MASTER_PORT into this process's environment; monkeypatch undoes it afterwards
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    dm = GroundingDataModule(train_file=str(data / "train.jsonl"), batch_size=1, seed=5, check_images=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(RankRecorder(str(tmp_path)), dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert not set(a) & set(b) and len(a) == len(b) == N // 2
        sampler = dm.train_sampler()
        sampler.set_epoch(int(epoch))
        assert [x for pair in zip(a, b) for x in pair] == [f"r{i:02d}" for i in sampler]
    assert ranks[0]["0"] != ranks[0]["1"]


class _OrderRecorder(Recorder):
    """Records every training record id in the order the steps saw them."""

    def __init__(self):
        super().__init__()
        self.order: list[str] = []

    def training_step(self, batch, batch_idx):
        self.order.extend(r["id"] for r in batch)
        return super().training_step(batch, batch_idx)


def _fit_steps(dm, root, max_steps, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = _OrderRecorder()
    saver = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[saver])
    trainer.fit(module, dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module.order


@pytest.mark.parametrize("resume_step", [2, 4, 5])  # mid-epoch (4 batches per epoch) and at an epoch boundary
def test_mid_epoch_resume_continues_with_the_next_unseen_batch(data, tmp_path, resume_step):
    full = _fit_steps(_dm(data, seed=3, batch_size=3), tmp_path / "full", 7)
    resumed = _fit_steps(_dm(data, seed=3, batch_size=3), tmp_path / "resumed", 7,
                         ckpt_path=tmp_path / "full" / f"step={resume_step}.ckpt")
    assert resumed == full[3 * resume_step:]


def _fit_validating(dm, root, max_steps, ckpt_path=None):
    """Validation every 2 steps; ModelCheckpoint then saves at validation end, while the trainer is validating."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = _OrderRecorder()
    saver = ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{step}")
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, val_check_interval=2,
                         limit_val_batches=1, callbacks=[saver])
    trainer.fit(module, dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module.order


@pytest.mark.parametrize("resume_step", [2, 4, 6])  # mid-epoch (4 batches per epoch) and at an epoch boundary
def test_resume_from_a_checkpoint_saved_at_validation_end_continues_with_the_next_unseen_batch(
        data, tmp_path, resume_step):
    full = _fit_validating(_dm(data, seed=3, batch_size=3), tmp_path / "full", 8)
    assert sorted(os.listdir(tmp_path / "full")) == [f"step={s}.ckpt" for s in (2, 4, 6, 8)]
    resumed = _fit_validating(_dm(data, seed=3, batch_size=3), tmp_path / "resumed", 8,
                              ckpt_path=tmp_path / "full" / f"step={resume_step}.ckpt")
    assert resumed == full[3 * resume_step:]


def test_cache_images_keeps_decoded_images_and_returns_fresh_dicts(data):
    dm = _dm(data, cache_images=True)
    dm.setup("fit")
    ds = dm.datasets["train"]
    first, again = ds[3], ds[3]
    assert first["image"] is again["image"]  # decoded once
    first["query"] = "changed"
    assert ds[3]["query"] != "changed"  # callers cannot corrupt the cache
    assert _dm(data).datasets == {} and not hasattr(_dm(data), "cache")


def test_predict_file_may_be_unlabelled_but_other_splits_may_not(data, tmp_path):
    # records to predict on (a hospital's new images) carry no box: missing or null; a present box is still checked
    lines = [record(f"u{i}", f"img/{i:02d}.{'png' if i % 2 else 'jpg'}", bbox=(1, 2, 10, 12), size=(24, 16))
             for i in range(3)]
    del lines[0]["bbox"]
    lines[1]["bbox"] = None
    write_jsonl(data / "unlabelled.jsonl", lines)
    dm = GroundingDataModule(predict_file=str(data / "unlabelled.jsonl"), batch_size=3)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert [r["bbox"] for r in batch] == [None, None, [1.0, 2.0, 10.0, 12.0]]
    with pytest.raises(ValueError) as err:  # the same file as a test split: every box is required
        GroundingDataModule(test_file=str(data / "unlabelled.jsonl")).setup("test")
    assert "unlabelled.jsonl:1: bbox: missing" in str(err.value)
    assert "unlabelled.jsonl:2: bbox: must be an array of 4 numbers [x1, y1, x2, y2], got null" in str(err.value)
    lines[2]["bbox"] = [1, 2, 99, 12]  # out of bounds: still an error when predicting
    write_jsonl(data / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=r"bad.jsonl:3: bbox: .*"):
        GroundingDataModule(predict_file=str(data / "bad.jsonl")).setup("predict")


def test_trainer_predict_on_unlabelled_records_writes_boxes_without_iou(data):
    from toy_modules import ScriptedPolicy  # tests/ is on sys.path: pytest inserts the folder of tests/conftest.py

    from medloc_lightning.module import GRPOGroundingModule

    lines = [record(f"u{i}", f"img/{i:02d}.png", bbox=(1, 2, 10, 12), size=(24, 16)) for i in (1, 3)]
    del lines[0]["bbox"]
    write_jsonl(data / "unlabelled.jsonl", lines)
    dm = GroundingDataModule(predict_file=str(data / "unlabelled.jsonl"), batch_size=2)
    module = GRPOGroundingModule(ScriptedPolicy(['<answer>{"bbox_2d": [1, 2, 5, 6]}</answer>']), num_generations=2)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    rows = [row for batch in trainer.predict(module, dm) for row in batch]
    assert [r["id"] for r in rows] == ["u1", "u3"]
    assert all(r["bbox"] == [1.0, 2.0, 5.0, 6.0] for r in rows)
    assert "iou" not in rows[0] and 0.0 < rows[1]["iou"] < 1.0


def _grpo_run(data, root, max_steps, ckpt_path=None):
    """GRPO on BoxPolicy under the curriculum; ``last.ckpt`` is written when the run stops at ``max_steps``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from medloc_lightning import ThresholdCurriculumCallback
    from medloc_lightning.curriculum import ThresholdCurriculum
    from medloc_lightning.module import GRPOGroundingModule
    from medloc_lightning.policies import BoxPolicy

    pl.seed_everything(0)
    policy = BoxPolicy(image_size=32, channels=8, query_dim=16, vocab_buckets=64)
    module = GRPOGroundingModule(policy, num_generations=4, learning_rate=1e-2)
    curriculum = ThresholdCurriculumCallback(ThresholdCurriculum(window=4, max_reward_std=1.0, checks=("stability",)))
    # (raises at every full window: the resumed window and tau are exercised)
    saver = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, enable_version_counter=False)
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[curriculum, saver])
    dm = GroundingDataModule(train_file=str(data / "train.jsonl"), batch_size=5, seed=3)  # 3 batches an epoch
    trainer.fit(module, dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module, trainer, curriculum


def test_extending_a_finished_run_equals_the_uninterrupted_run_bit_for_bit(data, tmp_path):
    # 20 steps end mid-epoch (epoch 6, batch 2 of 3); the run is then extended to 40
    full, full_trainer, full_cb = _grpo_run(data, tmp_path / "full", 40)
    _grpo_run(data, tmp_path / "first", 20)
    resumed, resumed_trainer, resumed_cb = _grpo_run(data, tmp_path / "second", 40, tmp_path / "first" / "last.ckpt")
    assert resumed_trainer.global_step == full_trainer.global_step == 40
    assert full_cb.schedule.num_raises >= 2 and resumed_cb.schedule.state_dict() == full_cb.schedule.state_dict()
    for name, tensor in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    ours, theirs = resumed_trainer.optimizers[0].state_dict(), full_trainer.optimizers[0].state_dict()
    for i, state in theirs["state"].items():
        for key, value in state.items():
            assert torch.equal(ours["state"][i][key], value), (i, key)
