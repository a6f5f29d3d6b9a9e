"""`medloc`: LightningCLI with fit / validate / test / predict, plus `export` (trained policy → HF folder).

    medloc fit --config configs/tiny_smoke.yaml
    medloc test --config configs/tiny_smoke.yaml --ckpt_path runs/tiny_smoke/.../last.ckpt
    medloc predict --config CFG --ckpt_path CKPT            # boxes as JSONL next to the logs
    medloc export --config CFG --ckpt_path CKPT --out_dir exported/
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI

from medloc_lightning.callbacks.curriculum import ThresholdCurriculumCallback
from medloc_lightning.callbacks.progress import use_step_progress_bar
from medloc_lightning.checkpointing.loading import load_checkpoint
from medloc_lightning.checkpointing.trainer import CheckpointingTrainer, checked_ckpt_path
from medloc_lightning.module import GroundingModule
from medloc_lightning.user_errors import report_user_errors


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results as JSONL (one record per line; one file per rank when distributed)."""

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self._path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        path = Path(self.output_path or Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self._path = path

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        with open(self._path, "a") as fh:
            for row in prediction:
                fh.write(json.dumps(row) + "\n")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(f"predictions written to {self._path}")


class Trainer(CheckpointingTrainer):
    """Lightning's Trainer with medloc's checkpoint handling (`CheckpointingTrainer`) plus `export`, so
    `medloc export` shares the config of `fit`."""

    def export(
        self,
        model: GroundingModule,
        datamodule: Any = None,
        ckpt_path: str | None = None,
        out_dir: str = "export",
    ) -> str:
        """Load a (full) checkpoint's weights into the model and write the policy for inference.

        Args:
            ckpt_path: a checkpoint written by `medloc fit` (a file or an http(s) URL); without it the untrained
                policy is exported.
            out_dir: the folder to write (a HF model folder, or a LoRA adapter, for Qwen2.5-VL).
        """
        model.configure_model()
        if ckpt_path:
            checkpoint = load_checkpoint(ckpt_path)
            model.on_load_checkpoint(checkpoint)
            model.load_state_dict(checkpoint["state_dict"], strict=model.strict_loading)
        model.export(out_dir)
        print(f"exported {type(model.policy).__name__} to {out_dir}")
        return out_dir


class MedlocCLI(LightningCLI):
    """LightningCLI plus a top-level ``curriculum`` key (the τ schedule's callback; ``null`` for none), the
    ``export`` subcommand, and a progress bar over optimizer steps (`StepProgressBar`) by default."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, then check ``--ckpt_path`` before anything reads it (LightningCLI reads its hyperparameters)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path") is not None:
            checked_ckpt_path(self.config[subcommand]["ckpt_path"])

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(ThresholdCurriculumCallback, "curriculum", subclass_mode=True, required=False)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        config = self.config_init.get(str(self.subcommand), self.config_init)
        configured = list((config.get("trainer") or {}).get("callbacks") or [])  # before Lightning extends it
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [cb for cb in trainer.callbacks if cb is not None]
        use_step_progress_bar(trainer, configured)
        return trainer

    def before_predict(self) -> None:
        if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())


def main(args: Sequence[str] | None = None) -> None:
    """The `medloc` command. A user error (a bad option value, a missing or invalid data file, a refused
    checkpoint) ends with one ``medloc: error: ...`` line and exit status 2; ``MEDLOC_TRACEBACK=1`` shows
    the traceback instead."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # GRPO steps inside training_step, so a checkpoint holds the post-step weights: that is what we want.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs torch 2.13
    report_user_errors("medloc", lambda: MedlocCLI(
        GroundingModule,
        pl.LightningDataModule,
        trainer_class=Trainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    ))


if __name__ == "__main__":
    main()
