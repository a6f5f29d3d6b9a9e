"""String choices are `Literal`s: `medloc --help` lists them and the CLI refuses another value, naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from medloc_lightning.cli import main

SMOKE = Path(__file__).parents[1] / "configs" / "tiny_smoke.yaml"
MODEL = "--model.init_args."
POLICY = MODEL + "policy.init_args."
SCHEDULE = "--curriculum.init_args.schedule.init_args."


@pytest.mark.parametrize("key, value, choices", [
    (MODEL + "loss_type", "ppo", "'grpo', 'bnpo', 'dr_grpo', 'dapo'"),
    (MODEL + "scale_rewards", "z", "'group', 'batch', 'none'"),
    (MODEL + "lr_schedule", "step", "'constant', 'cosine', 'linear'"),
    (MODEL + "reward.kind", "giou", "'threshold', 'iou', 'gated_iou', 'blend'"),
    (POLICY + "dtype", "fp8", "'auto', 'bfloat16', 'float16', 'float32'"),
    (POLICY + "quantization", "3bit", "'4bit', '8bit'"),
    (SCHEDULE + "checks", "[accuracy, speed]", "'accuracy', 'stability', 'margin'"),
], ids=lambda v: v.rsplit(".", 1)[-1] if isinstance(v, str) and v.startswith("--") else None)
def test_a_wrong_choice_is_refused_naming_the_key_and_the_choices(key, value, choices, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(SMOKE), key, value, "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f'"{key.rsplit(".", 1)[-1]}"' in err and choices in err and value.strip("[]").split(", ")[-1] in err


def test_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "medloc_lightning.GRPOGroundingModule"])
    out = capsys.readouterr().out
    for flag in ("--model.loss_type {grpo,bnpo,dr_grpo,dapo}", "--model.scale_rewards {group,batch,none}",
                 "--model.lr_schedule {constant,cosine,linear}"):
        assert flag in out
