"""`medloc` (LightningCLI): every shipped config parses, the tiny ones train, predict and export work."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from medloc_lightning.cli import MedlocCLI, Trainer, main

CONFIGS = Path(__file__).parents[1] / "configs"
MAIN = CONFIGS / "medloc_qwen2_5_vl_3b.yaml"
SMOKE = CONFIGS / "tiny_smoke.yaml"
OVERLAYS = sorted(p for sub in ("baselines", "ablations", "data", "strategies", "variants")
                  for p in (CONFIGS / sub).glob("*.yaml"))


def test_every_config_directory_is_covered():
    top = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"medloc_qwen2_5_vl_3b.yaml", "tiny_smoke.yaml"} <= top
    assert len(OVERLAYS) >= 25


@pytest.mark.parametrize("overlay", [None, *OVERLAYS], ids=lambda p: "main" if p is None else f"{p.parent.name}/{p.name}")
def test_print_config_with_the_paper_config(overlay, capsys):
    args = ["fit", "--config", str(MAIN)] + ([] if overlay is None else ["--config", str(overlay)]) + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: medloc_lightning" in out and "model:" in out


@pytest.mark.parametrize("overlay", [p for p in OVERLAYS if p.parent.name in ("baselines", "ablations")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_overlays_instantiate_on_the_tiny_config(overlay, tmp_path, monkeypatch):
    """Beyond parsing: every schedule, reward and module in the overlays is built for real."""
    monkeypatch.chdir(tmp_path)
    cli = MedlocCLI(args=["--config", str(SMOKE), "--config", str(overlay)], run=False, trainer_class=Trainer,
                    subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False,
                    **_cli_kwargs())
    callbacks = [type(cb).__name__ for cb in cli.trainer.callbacks]
    if overlay.name == "sft.yaml":
        assert type(cli.model).__name__ == "SFTGroundingModule" and "ThresholdCurriculumCallback" not in callbacks
    else:
        assert "ThresholdCurriculumCallback" in callbacks


def _cli_kwargs():
    import lightning.pytorch as pl

    from medloc_lightning.module import GroundingModule

    return {"model_class": GroundingModule, "datamodule_class": pl.LightningDataModule}


def _fit(tmp_path, monkeypatch, *extra):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["fit", "--config", str(SMOKE), *extra, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
              "--trainer.limit_val_batches", "1", "--data.init_args.n", "20"])


def test_tiny_smoke_fit_test_predict_export(tmp_path, monkeypatch):
    _fit(tmp_path, monkeypatch)
    ckpt = tmp_path / "runs" / "tiny_smoke" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    events = list((tmp_path / "runs" / "tiny_smoke" / "tb").rglob("events.out.tfevents.*"))
    assert events
    common = ["--config", str(SMOKE), "--data.init_args.n", "20", "--ckpt_path", str(ckpt)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["test", *common])
        main(["predict", *common])
        main(["export", *common, "--out_dir", str(tmp_path / "exported")])
    predictions = list((tmp_path / "runs" / "tiny_smoke" / "tb").rglob("predictions.jsonl"))
    rows = [json.loads(line) for line in predictions[0].read_text().splitlines()]
    assert len(rows) == 2 and {"id", "bbox", "answer", "iou"} <= set(rows[0])  # 20 records -> 2 test records
    assert (tmp_path / "exported" / "adapter_config.json").is_file()  # tiny_smoke trains LoRA: adapter export


def test_sft_baseline_on_the_tiny_config(tmp_path, monkeypatch):
    _fit(tmp_path, monkeypatch, "--config", str(CONFIGS / "baselines" / "sft.yaml"))
    assert (tmp_path / "runs" / "baseline_sft").exists() or (tmp_path / "runs" / "tiny_smoke").exists()


def test_export_rejects_a_checkpoint_of_another_model(tmp_path, monkeypatch, capsys):
    _fit(tmp_path, monkeypatch)
    ckpt = tmp_path / "runs" / "tiny_smoke" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["export", "--config", str(SMOKE), "--model.init_args.policy.init_args.lora_target_modules", "[q_proj]",
              "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "x")])
    assert "medloc: error: checkpoint does not match this model's trainable weights" in capsys.readouterr().err
