"""Two CPU processes (gloo) training GRPO on the tiny Qwen2.5-VL: DDP, and FSDP2 via ModelParallelStrategy.

FSDP1 (`QwenFSDPStrategy`) needs an accelerator (torch refuses CPU), so it cannot run here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_grpo.py"


def run(tmp_path, model_dir, data_dir, strategy):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), model_dir, data_dir, strategy], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def check_ranks_agree(ranks):
    assert set(ranks[0]["seen"]).isdisjoint(ranks[1]["seen"])  # a group's prompts stay on one rank
    assert ranks[0]["taus"] == ranks[1]["taus"] and ranks[0]["state"] == ranks[1]["state"]
    assert ranks[0]["state"]["num_raises"] >= 1
    assert ranks[0]["val"] and ranks[0]["val"] == ranks[1]["val"]  # metrics reduced over both shards
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4
    assert ranks[0]["counts"] == ranks[1]["counts"]  # global totals on every rank


@pytest.mark.slow
def test_ddp_grpo_two_processes(tmp_path, tiny_qwen_sft_dir, synth_dir):
    ranks = run(tmp_path, tiny_qwen_sft_dir, synth_dir, "ddp")
    check_ranks_agree(ranks)
    # rank 1's 2 + 1 over-long prompts, counted on both ranks; rank 0 still trained while rank 1 had no row
    assert ranks[0]["counts"]["rejected"] == 3 and ranks[0]["counts"]["skipped_steps"] == 0
    assert ranks[0]["val"]["val/parse_rate"] > 0


@pytest.mark.slow
def test_fsdp2_grpo_two_processes(tmp_path, tiny_qwen_sft_dir, synth_dir):
    ranks = run(tmp_path, tiny_qwen_sft_dir, synth_dir, "fsdp2")
    check_ranks_agree(ranks)
    # sharded ranks generate together: when rank 1 had no prompt, rank 0's 2 were not generated either
    assert ranks[0]["counts"]["rejected"] == 2 + 2 + 1 and ranks[0]["counts"]["skipped_steps"] == 1
    assert ranks[0]["sharded"] and ranks[1]["sharded"]  # the weights really were DTensor shards
    state = torch.load(tmp_path / "fsdp2.ckpt", weights_only=True)
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])


def test_step_seeds_differ_for_every_rank_and_step():
    from medloc_lightning.distributed import step_rng

    draws = set()
    for rank in range(3):
        for step in (0, 1, 7919, 7920, 2 * 7919):
            with step_rng(0, rank, step, torch.device("cpu")):
                draws.add(int(torch.randint(0, 2 ** 62, (1,))))
    assert len(draws) == 15
    with step_rng(3, 0, 5, torch.device("cpu")):
        draw = torch.rand(4)
    torch.manual_seed(3 * 1_000_003 + 5)
    assert torch.equal(draw, torch.rand(4))  # one process: the same streams as earlier releases


def test_only_the_distributed_module_talks_to_other_ranks():
    """Collectives live in medloc_lightning/distributed.py alone: no other module calls torch.distributed (beyond
    its fsdp, tensor and device-mesh types) or a Lightning strategy's reduce, gather, broadcast or barrier."""
    package = Path(__file__).parents[1] / "medloc_lightning"
    talks = re.compile(r"torch\.distributed\.(?!fsdp\b|tensor\b|device_mesh\b)\w+|import torch\.distributed as"
                       r"|from torch\.distributed import|strategy\.(reduce|all_gather|broadcast|barrier)\b")
    found = [f"{path.relative_to(package)}:{number}: {line.strip()}"
             for path in sorted(package.rglob("*.py")) if path.name != "distributed.py" or path.parent != package
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if talks.search(line)]
    assert found == []
