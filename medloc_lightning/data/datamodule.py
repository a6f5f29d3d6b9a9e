"""GroundingDataModule: JSONL record files -> validated HF datasets -> DataLoaders of record lists.

Metadata is checked once at ``setup`` (the same checks as ``medloc-data validate``); images are decoded
lazily per item and checked again there, because setup may have run with ``check_images=False``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, DistributedSampler

from medloc_lightning.data.images import load_rgb
from medloc_lightning.data.schema import (OPTIONAL_FIELDS, CheckedRecord, Problem, count_bad_records, format_problems,
                                         read_image_checked, read_records)
from medloc_lightning.errors import ConfigError, DataError, MissingFileError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "predict")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class RecordError(DataError):
    """A record that fails at load time; the message names file, line and field."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _features() -> Any:
    import datasets

    text = datasets.Value("string")
    sequence = getattr(datasets, "List", None) or datasets.Sequence  # List is new in datasets 4
    return datasets.Features({
        "id": text, "image": text, "query": text, "bbox": sequence(datasets.Value("float64")),
        "width": datasets.Value("int64"), "height": datasets.Value("int64"),
        "dataset": text, "modality": text, "label": text, "line": datasets.Value("int64"),
    })


def records_to_hf(records: Sequence[CheckedRecord]) -> Any:
    """Checked records -> in-memory ``datasets.Dataset`` with fixed features (normalized floats, resolved image
    paths, source line). Built in memory with ``Dataset.from_list``: nothing is written, nothing is fetched,
    and no file stays open (fork-safe)."""
    import datasets

    # every field, unset optional ones as None (the features need every key)
    rows = [{**dataclasses.asdict(r), "bbox": None if r.bbox is None else list(r.bbox)} for r in records]
    return datasets.Dataset.from_list(rows, features=_features())


class GroundingDataset(torch.utils.data.Dataset):
    """The records of one JSONL file; ``ds[i]`` decodes the image (RGB) and returns a record dict."""

    def __init__(self, table: Any, file: str, cache_images: bool = False) -> None:
        self.table = table
        self.file = file
        self.cache: dict[int, Any] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.cache is None:
            return self._load(int(index))
        if index not in self.cache:
            self.cache[index] = self._load(int(index))
        return dict(self.cache[index])

    def _load(self, index: int) -> dict[str, Any]:
        row = self.table[index]
        path = row["image"]
        image, problems = read_image_checked(path, row["width"], row["height"], self.file, row["line"], _load_with_size)
        if problems:
            raise RecordError(problems[0])
        bbox = None if row["bbox"] is None else list(row["bbox"])
        record = {"id": row["id"], "image": image, "query": row["query"], "bbox": bbox,
                  "width": row["width"], "height": row["height"], "image_path": path}
        record.update({k: row[k] for k in OPTIONAL_FIELDS if row[k] is not None})
        return record


def _load_with_size(path: str) -> tuple[Any, tuple[int, int]]:
    image = load_rgb(path)
    return image, image.size


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` whose next iteration can be any epoch's order, from part-way through it.

    Lightning resumes a mid-epoch checkpoint at the right batch index but restarts a plain loader from its
    first batch, and the epoch number it passes to ``set_epoch`` on resume depends on where the checkpoint
    was written (a run stopped by ``max_steps`` saves after its epoch-end hook and resumes one epoch ahead).
    ``resume(epoch, skip)`` makes the next iteration the order of ``epoch`` without its first ``skip``
    indices, and later epochs count on from ``epoch`` whatever number ``set_epoch`` receives.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0
        self.offset = 0
        """Added to every ``set_epoch`` value: the gap between Lightning's epoch count and this sampler's."""
        self._resume_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch + self.offset)

    def resume(self, epoch: int, skip: int = 0) -> None:
        """Make the next iteration ``epoch``'s order from index ``skip`` on."""
        self._resume_epoch, self.skip = int(epoch), int(skip)

    def __iter__(self):  # type: ignore[override]
        if self._resume_epoch is not None:
            self.offset += self._resume_epoch - self.epoch
            self.epoch, self._resume_epoch = self._resume_epoch, None
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


def collate_records(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list of record dicts: the policy's processor owns resizing, so nothing is stacked."""
    return list(batch)


def load_record_file(file: str, image_root: str | None = None, check_images: bool = True, skip_invalid: bool = False,
                     max_records: int | None = None, name: str = "records", cache_images: bool = False,
                     require_bbox: bool = True,
                     allow_outside_root: bool = False) -> tuple[GroundingDataset, list[Problem]]:
    """Validate one JSONL file and wrap its valid records; raise `DataError` on problems unless skipping, and
    always when no valid record is left. ``require_bbox=False``: records to predict on, whose ``bbox`` may be
    missing (then None in the batch). ``allow_outside_root``: see `read_records`."""
    if not os.path.isfile(file):
        raise MissingFileError(f"{name}: record file not found: {file}")
    records, problems = read_records(file, image_root=image_root, check_images=check_images, max_records=max_records,
                                     require_bbox=require_bbox, allow_outside_root=allow_outside_root)
    whole_file = [str(p) for p in problems if p.line == 0]
    if whole_file:  # e.g. an empty file: nothing to skip
        raise DataError(f"{name}: {'; '.join(whole_file)}")
    if problems:
        n_bad = count_bad_records(problems)
        summary = (f"{name} {file}: {n_bad} of {n_bad + len(records)} records are invalid "
                   f"({len(problems)} problems):\n{format_problems(problems)}")
        if not skip_invalid:
            command = f"medloc-data validate{'' if require_bbox else ' --unlabelled'} {file}"
            raise DataError(f"{summary}\nFix them (`{command}` lists all) or pass skip_invalid=True.")
        if not records:
            raise DataError(f"{name} {file}: no valid record ({n_bad} invalid skipped):\n{format_problems(problems)}")
        warnings.warn(f"skipping invalid records: {summary}", UserWarning, stacklevel=2)
        log.warning("skipped %d invalid records of %s", n_bad, file)
    return GroundingDataset(records_to_hf(records), file, cache_images), problems


class GroundingDataModule(pl.LightningDataModule):
    """Train/val/test/predict JSONL record files as DataLoaders of ``list[dict]`` batches (see docs/data.md).

    Training order is a permutation drawn from ``seed + epoch`` and split across ranks like a
    ``DistributedSampler`` (the sampler is one, so Lightning keeps it): the same seed gives the same
    global order on any number of ranks, with disjoint shards. Invalid records raise at ``setup`` unless
    ``skip_invalid=True``, which skips them with a warning and counts them in ``skipped``/``problems``; a file
    left without any valid record always raises. Image paths must resolve inside the dataset root
    (``image_root``, or each file's folder) unless ``allow_outside_root=True``.
    ``cache_images=True`` keeps decoded images in memory after their first use (small sets such as the
    synthetic data; one cache per worker process when ``num_workers > 0``).
    """

    def __init__(self, train_file: str | None = None, val_file: str | None = None, test_file: str | None = None,
                 predict_file: str | None = None, image_root: str | None = None, batch_size: int = 2,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0, shuffle: bool = True,
                 skip_invalid: bool = False, check_images: bool = True, max_records: int | None = None,
                 cache_images: bool = False, allow_outside_root: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.image_root = image_root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle = shuffle
        self.skip_invalid = skip_invalid
        self.check_images = check_images
        self.max_records = max_records
        self.cache_images = cache_images
        self.allow_outside_root = allow_outside_root
        self.datasets: dict[str, GroundingDataset] = {}
        self.problems: dict[str, list[Problem]] = {}
        self.skipped: dict[str, int] = {}
        self._resume: dict[str, int] | None = None
        self._sampler: ResumableSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load and validate the files the stage needs (all given files when ``stage`` is None); idempotent."""
        for split in _STAGE_SPLITS.get(stage or "", SPLITS):
            file = self.files[split]
            if file is None or split in self.datasets:
                continue
            dataset, problems = load_record_file(file, self.image_root, self.check_images, self.skip_invalid,
                                                 self.max_records, name=f"{split}_file",
                                                 cache_images=self.cache_images, require_bbox=split != "predict",
                                                 allow_outside_root=self.allow_outside_root)
            self.datasets[split] = dataset
            self.problems[split] = problems
            self.skipped[split] = count_bad_records(problems)

    def _dataset(self, split: str) -> GroundingDataset:
        if self.files[split] is None:
            raise ConfigError(f"GroundingDataModule: {split}_file is not set, so there is no {split} data")
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        return self.datasets[split]

    def _loader(self, dataset: GroundingDataset, batch_size: int, sampler: Any = None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate_records, persistent_workers=self.num_workers > 0)

    def train_sampler(self, num_replicas: int = 1, rank: int = 0) -> ResumableSampler:
        """The training sampler for one rank; Lightning calls its ``set_epoch`` every epoch."""
        return ResumableSampler(self._dataset("train"), num_replicas=num_replicas, rank=rank,
                                shuffle=self.shuffle, seed=self.seed, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        kwargs = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        sampler = self.train_sampler(kwargs.get("num_replicas", 1), kwargs.get("rank", 0))
        if self._sampler is not None:
            sampler.offset = self._sampler.offset  # a reloaded loader keeps counting epochs where the last one was
        if self._resume is not None:
            done, epoch = self._resume.get("batches", 0), self._resume.get("sampler_epoch")
            per_epoch = math.ceil(len(sampler) / self.batch_size)
            skip = done * self.batch_size if 0 < done < per_epoch else 0  # at an epoch's end nothing is skipped
            if epoch is not None:  # None: the checkpoint was written before the first training loader
                sampler.resume(epoch + 1 if done >= per_epoch else epoch, skip)
            self._resume = None
        self._sampler = sampler
        return self._loader(self._dataset("train"), self.batch_size, sampler)

    def state_dict(self) -> dict[str, Any]:
        """Where the training epoch stands (the sampler's epoch and the batches done in it), so a checkpoint
        resumes on the next unseen batch of the right epoch's order. Saved throughout ``fit``, including the
        validation inside it, where ModelCheckpoint saves when validation runs every N steps."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        state = {"batches": int(progress.processed)}
        if self._sampler is not None:
            state["sampler_epoch"] = int(self._sampler.epoch)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember the saved position for the next ``train_dataloader``."""
        self._resume = dict(state_dict) if state_dict else None

    def val_dataloader(self) -> DataLoader | list:
        # no val file: an empty list tells Lightning to skip validation
        return [] if self.files["val"] is None else self._loader(self._dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("predict"), self.eval_batch_size)


class SyntheticDataModule(GroundingDataModule):
    """`GroundingDataModule` over synthetic data that it generates into ``root`` on first use.

    No download, no glue: the quickstart, the smoke config and the tests train on it. The data is
    regenerated when the generation arguments differ from those recorded in ``root/synth.json``. A ``root``
    that holds other files and no ``synth.json`` (someone's own data) is refused, never overwritten.
    """

    def __init__(self, root: str = "data/synthetic", n: int = 600, synth_seed: int = 0, modality: str = "mixed",
                 size: int = 224, preset: str = "default", workers: int = 2, **kwargs: Any) -> None:
        test = os.path.join(root, "test.jsonl")  # `predict` answers the test split
        super().__init__(train_file=os.path.join(root, "train.jsonl"), val_file=os.path.join(root, "val.jsonl"),
                         test_file=test, predict_file=test, **kwargs)
        self.root = root
        self.synth = {"n": int(n), "seed": int(synth_seed), "modality": modality, "size": int(size), "preset": preset}
        self.workers = int(workers)

    def prepare_data(self) -> None:
        """Generate the data into ``root`` unless a complete ``synth.json`` records the same arguments."""
        from medloc_lightning.data.synth import SynthConfig, generate, read_stamp, stamp_args

        args = dict(self.synth)
        config = SynthConfig.preset(args.pop("preset"))
        wanted = {"status": "complete", "args": stamp_args(config=config, **args)}
        stamp = read_stamp(self.root)
        if stamp is not None and all(stamp.get(k) == v for k, v in wanted.items()) and all(
                os.path.isfile(f) for f in list(self.files.values())[:3]):
            return
        counts = generate(self.root, config=config, workers=self.workers, **args)  # refuses folders it did not make
        log.info("generated synthetic data in %s: %s", self.root, counts)

    def setup(self, stage: str | None = None) -> None:
        """Make sure ``root`` holds complete data made with these arguments (also without a Trainer, which
        would have called `prepare_data`), then load it."""
        self.prepare_data()  # returns at once when the stamp matches
        super().setup(stage)
