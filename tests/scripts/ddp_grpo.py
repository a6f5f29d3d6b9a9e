"""Run by tests/test_distributed.py: GRPO on the tiny Qwen2.5-VL with 2 CPU processes (gloo).

argv: OUT_DIR MODEL_DIR DATA_DIR STRATEGY(ddp|fsdp2). Each rank dumps what it saw and what it holds.

Rank 1's prompts are made too long for the context on its second batch (all of them) and third batch (the
first): ranks then hold different numbers of rows, or none, which must neither hang nor desynchronise them.
"""
import json
import sys
import warnings
from pathlib import Path

import torch

import lightning.pytorch as pl
from medloc_lightning import ThresholdCurriculumCallback
from medloc_lightning.curriculum import ThresholdCurriculum
from medloc_lightning.data import GroundingDataModule
from medloc_lightning.module import GRPOGroundingModule
from medloc_lightning.policies.qwen import QwenVLPolicy
from medloc_lightning.rewards import GroundingReward


class Recording(GRPOGroundingModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []
        self.taus: list[float] = []

    def training_step(self, batch, batch_idx):
        self.seen.extend(r["id"] for r in batch)
        self.taus.append(float(self.iou_threshold))
        if self.global_rank == 1 and batch_idx in (1, 2):
            too_long = "lesion " * 4000
            batch = [{**r, "query": too_long} if batch_idx == 1 or i == 0 else r for i, r in enumerate(batch)]
        return super().training_step(batch, batch_idx)


def main(out: Path, model_dir: str, data_dir: str, strategy: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    pl.seed_everything(0)
    if strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy_obj = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                             save_distributed_checkpoint=False)
        policy = QwenVLPolicy(model_dir, max_pixels=64 * 64, max_new_tokens=24, lora_r=8)
    else:
        strategy_obj = "ddp"
        policy = QwenVLPolicy(model_dir, max_pixels=64 * 64, max_new_tokens=24, lora_r=8)
    policy.logprob_batch_size = 1  # one row per forward, two per backward chunk: forwards differ by rank
    module = Recording(policy, num_generations=3, learning_rate=1e-3, temperature=1.0,
                       reward=GroundingReward(kind="iou"), loss_type="dapo", micro_batch_size=2)
    cb = ThresholdCurriculumCallback(ThresholdCurriculum(window=2, min_hit_rate=0.0, checks=("accuracy",)))
    dm = GroundingDataModule(train_file=f"{data_dir}/train.jsonl", val_file=f"{data_dir}/val.jsonl",
                             batch_size=2, seed=0)
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(out, name=strategy)  # every step logs: the stats' mean over ranks runs each time
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy_obj, max_steps=4, logger=logger,
                         log_every_n_steps=1,
                         callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=2, val_check_interval=2)
    trainer.fit(module, dm)
    from torch.distributed.tensor import DTensor

    sharded = any(isinstance(p, DTensor) for p in module.parameters())
    trainer.save_checkpoint(out / f"{strategy}.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
        "seen": module.seen, "taus": module.taus + [cb.schedule.tau], "state": cb.schedule.state_dict(),
        "val": metrics, "steps": trainer.global_step, "sharded": sharded, "counts": dict(module.counts)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
