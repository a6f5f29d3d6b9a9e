"""`medloc` (LightningCLI): every shipped config parses, the tiny ones train, predict and export work."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from medloc_lightning.cli import MedlocCLI, Trainer, main

CONFIGS = Path(__file__).parents[1] / "configs"
MAIN = CONFIGS / "medloc_qwen2_5_vl_3b.yaml"
SMOKE = CONFIGS / "tiny_smoke.yaml"
OVERLAYS = sorted(p for sub in ("baselines", "ablations", "data", "strategies", "variants")
                  for p in (CONFIGS / sub).glob("*.yaml"))
RUN_OVERLAYS = [p for p in OVERLAYS if "default_root_dir" in (yaml.safe_load(p.read_text()).get("trainer") or {})]


def _run_folder(overlay: Path) -> str:
    return yaml.safe_load(overlay.read_text())["trainer"]["default_root_dir"]


def test_every_config_directory_is_covered():
    top = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"medloc_qwen2_5_vl_3b.yaml", "tiny_smoke.yaml"} <= top
    assert len(OVERLAYS) >= 25
    assert {p.parent.name for p in RUN_OVERLAYS} == {"baselines", "ablations", "variants"}
    folders = [_run_folder(p) for p in RUN_OVERLAYS]
    assert len(set(folders)) == len(folders)  # no two overlays share a folder


@pytest.mark.parametrize("overlay", RUN_OVERLAYS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_overlay_moves_every_output_of_the_paper_recipe_into_its_folder(overlay, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["medloc"])  # the command line is the args below, not pytest's
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(MAIN), "--config", str(overlay), "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    folder = _run_folder(overlay)
    assert trainer["default_root_dir"] == trainer["logger"]["init_args"]["save_dir"] == folder
    # checkpoints follow the logger: no callback writes to a path of its own
    assert not [cb for cb in trainer["callbacks"] if (cb.get("init_args") or {}).get("dirpath")]


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
    events = list((tmp_path / "runs" / "tiny_smoke").glob("events.out.tfevents.*"))
    assert events
    common = ["--config", str(SMOKE), "--data.init_args.n", "20", "--ckpt_path", str(ckpt)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["test", *common])
        main(["predict", *common])
        main(["export", *common, "--out_dir", str(tmp_path / "exported")])
    predictions = list((tmp_path / "runs" / "tiny_smoke").glob("predictions.jsonl"))
    rows = [json.loads(line) for line in predictions[0].read_text().splitlines()]
    assert len(rows) == 2 and {"id", "bbox", "answer", "iou"} <= set(rows[0])  # 20 records -> 2 test records
    assert (tmp_path / "exported" / "adapter_config.json").is_file()  # tiny_smoke trains LoRA: adapter export


@pytest.mark.parametrize("overlay", ["baselines/sft.yaml", "ablations/fixed_moderate.yaml"])
def test_an_overlay_run_lands_in_its_own_folder_and_nowhere_else(tmp_path, monkeypatch, overlay):
    _fit(tmp_path, monkeypatch, "--config", str(CONFIGS / overlay))
    folder = tmp_path / _run_folder(CONFIGS / overlay)
    assert [p for p in (tmp_path / "runs").iterdir()] == [folder]  # runs/tiny_smoke untouched
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert list(folder.glob("events.out.tfevents.*")) and (folder / "config.yaml").is_file()


def test_export_rejects_a_checkpoint_of_another_model(tmp_path, monkeypatch, capsys):
    _fit(tmp_path, monkeypatch)
    ckpt = tmp_path / "runs" / "tiny_smoke" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["export", "--config", str(SMOKE), "--model.init_args.policy.init_args.lora_target_modules", "[q_proj]",
              "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "x")])
    assert "medloc: error: checkpoint does not match this model's trainable weights" in capsys.readouterr().err
