"""The shipped grounding prior loads with the stock classes and grounds; its recipe runs end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from medloc_lightning.boxes import box_iou
from medloc_lightning.pretrained import shipped_path
from medloc_lightning.data.synth import PRESETS, make_record
from medloc_lightning.parsing import has_valid_format
from medloc_lightning.data.records import gt_boxes
from medloc_lightning.policies.qwen import QwenVLPolicy
from medloc_lightning.lab.qwen_prior import build_qwen_grounding_prior
from medloc_lightning.lab.report import grounding_report
from medloc_lightning.prior import PRIOR_PROMPT_TEMPLATE, REPORT_FILE

NAME = "medloc:tiny-qwen2.5-vl-grounding"
SIZE = 84


def records(preset: str, n: int, seed: int) -> list[dict]:
    out = []
    for i in range(n):
        record, pixels = make_record(i, seed, "mixed", SIZE, PRESETS[preset])
        out.append({**record, "image": Image.fromarray(pixels).convert("RGB")})
    return out


@pytest.fixture(scope="module")
def prior() -> QwenVLPolicy:
    policy = QwenVLPolicy(NAME, min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE, max_new_tokens=40,
                          prompt_template=PRIOR_PROMPT_TEMPLATE)
    policy.configure()
    return policy.eval()


def test_the_shipped_folder_loads_with_the_stock_classes_and_is_small() -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from medloc_lightning.policies.qwen.processor import ImageOnlyQwen2_5_VLProcessor

    path = shipped_path(NAME)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(path)
    assert model.config.model_type == "qwen2_5_vl" and processor.tokenizer.eos_token == "<|im_end|>"
    assert sum(f.stat().st_size for f in path.iterdir()) < 10 * 2**20
    report = json.loads((path / REPORT_FILE).read_text())
    assert report["recipe"]["size"] == SIZE and "source_val" in report


def test_the_prior_answers_in_format_and_grounds_better_than_the_median_box(prior: QwenVLPolicy) -> None:
    batch = records("easy", 48, seed=11)  # the source distribution, unseen images
    texts, boxes = prior.predict(batch)
    assert all(has_valid_format(t, require_think=False) for t in texts), texts[:3]
    ious = box_iou(boxes, gt_boxes(batch))
    report = grounding_report(prior, batch, gt_boxes(records("easy", 200, seed=12)))
    assert report["policy"]["miou"] == pytest.approx(float(ious.mean()), abs=1e-6)
    assert report["policy"]["miou"] > report["median_box"]["miou"] + 0.15
    assert report["policy"]["acc@0.5"] > report["median_box"]["acc@0.5"] + 0.2
    assert report["policy"]["centre_corr_x"] > 0.5 and report["policy"]["centre_corr_y"] > 0.5


def test_the_recipe_builds_trains_exports_and_reports_with_a_tiny_budget(tmp_path: Path) -> None:
    out = tmp_path / "prior"
    report = build_qwen_grounding_prior(
        out, work_dir=tmp_path / "work", dims={"hidden": 64, "layers": 1, "vision_hidden": 64, "vision_depth": 1},
        size=56, target_presets=("single",), n_source=40, n_target=30, batch_size=4, max_steps=6, val_every=3,
        val_records=4, warmup_steps=0, max_minutes=None)
    assert report["fit"]["steps"] == 6 and report["fit"]["best_step"] in (3, 6)
    assert set(report["target_single_val"]) == {"policy", "median_box", "rows"}
    assert json.loads((out / REPORT_FILE).read_text())["recipe"]["size"] == 56
    reloaded = QwenVLPolicy(str(out), min_pixels=56 * 56, max_pixels=56 * 56, max_new_tokens=8)
    texts, boxes = reloaded.predict(records("easy", 2, seed=0)[:2])
    assert len(texts) == 2 and boxes.shape == (2, 4)
    assert torch.isfinite(torch.tensor(report["source_val"]["median_box"]["miou"]))


def test_warm_start_scores_the_last_weights_and_reloads_the_best(tmp_path: Path, synth_dir: str) -> None:
    """Validation every 3 steps of 5: step 5 is scored too, and the best weights are back in the module."""
    import lightning.pytorch as pl

    from medloc_lightning.data import GroundingDataModule
    from medloc_lightning.module import SFTGroundingModule
    from medloc_lightning.policies import BoxPolicy
    from medloc_lightning.prior import warm_start

    pl.seed_everything(0)
    data = GroundingDataModule(train_file=f"{synth_dir}/train.jsonl", val_file=f"{synth_dir}/val.jsonl",
                               batch_size=4, seed=0)
    module = SFTGroundingModule(BoxPolicy(image_size=64, seed=0), learning_rate=0.03)
    fit = warm_start(module, data, max_steps=5, val_every=3, root=tmp_path, log=False)  # scored at 3 and 5
    assert fit["steps"] == 5 and set(fit["scores"]) == {3, 5} and Path(fit["best_checkpoint"]).is_file()
    assert fit["best_step"] == max(fit["scores"], key=fit["scores"].get)
    assert fit["best_score"] == max(fit["scores"].values())
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    again = trainer.validate(module, data, verbose=False)[0]["val/miou"]
    assert again == pytest.approx(fit["best_score"], abs=1e-6)  # the weights in the module are the best ones


def test_the_command_line_gives_the_shipped_recipe_and_validates_exactly_val_records(monkeypatch) -> None:
    from medloc_lightning.lab import qwen_prior, report

    seen = {}
    monkeypatch.setattr(qwen_prior, "build_qwen_grounding_prior", lambda out, **kw: seen.update(kw) or {})
    qwen_prior.main(["--out", "unused"])
    shipped = json.loads((shipped_path(NAME) / REPORT_FILE).read_text())["recipe"]
    pixels = seen["size"] ** 2
    assert {"min_pixels": pixels, "max_pixels": pixels, **seen["dims"]} == shipped["dims"]
    # whole batches of at most 32 covering exactly val_records (200 -> 8 x 25, not 7 x 32 = 224)
    assert [qwen_prior._eval_batch_size(n) for n in (200, 4, 64, 37)] == [25, 4, 32, 1]
    assert report.json_ready({"r": [float("nan"), 1.0], "x": float("inf")}) == {"r": [None, 1.0], "x": None}
