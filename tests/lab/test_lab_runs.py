"""medloc_lightning.lab: methods read from the shipped configs, the prior regime, and short real runs."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from medloc_lightning import lab
from medloc_lightning.curriculum import FixedThreshold, IntervalSchedule, ProgressSchedule, ThresholdCurriculum
from medloc_lightning.policies.box import BoxPolicy

TINY_POLICY = {"image_size": 64, "channels": 16, "query_dim": 16, "vocab_buckets": 256}
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    module = lab.lab_data(str(tmp_path_factory.mktemp("lab") / "data"), n=50, size=64, batch_size=4)
    module.prepare_data()
    return module


def test_the_methods_are_the_recipe_and_every_baseline_and_ablation_overlay() -> None:
    names = lab.method_names()
    stems = {p.stem for sub in ("baselines", "ablations") for p in (lab.CONFIGS / sub).glob("*.yaml")}
    assert names[0] == "medloc" and set(names[1:]) == stems - set(lab.SAME_AS_RECIPE)
    for name in lab.SAME_AS_RECIPE:  # restating the recipe, they resolve to medloc's schedule exactly
        assert lab.load_method(name).schedule == lab.load_method("medloc").schedule
    medloc = lab.load_method("medloc")
    assert medloc.config == lab.RECIPE and medloc.module == "grpo" and medloc.reward["kind"] == "threshold"
    assert isinstance(medloc.build_schedule(), ThresholdCurriculum)
    sft = lab.load_method("sft")
    assert sft.module == "sft" and sft.schedule is None and sft.build_schedule() is None
    assert lab.load_method("raw_iou").reward["kind"] == "iou" and lab.load_method("v_triune").reward["kind"] == "gated_iou"
    with pytest.raises(ValueError, match="unknown method 'medloc_r1'.*fixed_tau"):
        lab.load_method("medloc_r1")


def test_both_readings_of_the_fixed_schedules() -> None:
    blind, gated = lab.load_method("fixed_aggressive").build_schedule(), lab.load_method("fixed_gated_aggressive")
    assert isinstance(blind, IntervalSchedule)
    raised = [k for k in range(1, 201) if blind.observe([0.0] * 4, progress=k / 200)]
    assert raised == [10, 20, 30, 40]  # every 5% of the run, whatever the IoUs
    schedule = gated.build_schedule()
    assert isinstance(schedule, ThresholdCurriculum) and schedule.checks == ("accuracy", "stability", "margin")
    assert schedule.step.steps == (0.15,) and schedule.min_hit_rate == (0.8, 0.8) and schedule.max_reward_std == (0.1, 0.1)
    progress = lab.load_method("v_triune_binary").build_schedule()
    assert isinstance(progress, ProgressSchedule) and [progress.tau_at(p) for p in (0.1, 0.25, 1.0)] == [0.3, 0.55, 0.8]


def test_a_grpo_run_records_every_step_and_counts_groups_early(data) -> None:
    result = lab.run("medloc", data, steps=STEPS, policy_kwargs=TINY_POLICY, return_policy=True)
    assert result.steps == STEPS and len(result.taus) == STEPS and len(result.hit_rates) == STEPS
    assert result.taus[0] == pytest.approx(0.3) and result.final_tau >= 0.3
    assert len(result.reward_stds) == len(result.iou_margins) == STEPS
    for series in (result.hit_rates, result.reward_stds, result.iou_margins):
        assert math.isnan(series[0]) and not math.isnan(series[-1])  # empty window, then filled
    assert {"acc@0.5", "acc@0.75", "pseudo_map", "miou"} <= set(result.test)
    # An all-fail group has equal (zero) rewards, so it is one of the zero-std groups.
    assert 0.0 <= result.all_fail_early <= result.zero_std_early <= 1.0
    assert isinstance(result.policy, BoxPolicy) and not result.policy.training
    as_dict = result.to_dict()
    assert "policy" not in as_dict and as_dict["regime"] == "random_init"
    json.dumps(as_dict)


def test_an_untrained_policy_under_a_strict_threshold_fails_every_group(data) -> None:
    # τ = 0.99 for the whole run: no box of a freshly initialised policy gets there, so every group is all-fail
    # and zero-std (the vanishing-gradient case the curriculum exists for).
    strict = replace(lab.load_method("fixed_tau"), name="strict",
                     schedule={"class_path": "medloc_lightning.curriculum.FixedThreshold", "init_args": {"tau": 0.99}})
    assert isinstance(strict.build_schedule(), FixedThreshold)
    result = lab.run(strict, data, steps=STEPS, policy_kwargs=TINY_POLICY)
    assert result.method == "strict" and result.final_tau == 0.99
    assert result.all_fail_early == 1.0 and result.zero_std_early == 1.0 and result.num_raises == 0


def test_a_run_keeps_the_iou_of_every_test_image(data) -> None:
    result = lab.run("medloc", data, steps=2, policy_kwargs=TINY_POLICY)
    data.setup("test")
    ious = result.test_ious
    assert len(ious) == len(data.datasets["test"]) and all(0.0 <= v <= 1.0 for v in ious)
    assert sum(ious) / len(ious) == pytest.approx(result.test["miou"], abs=1e-6)
    assert sum(v >= 0.5 for v in ious) / len(ious) == pytest.approx(result.test["acc@0.5"], abs=1e-6)


def test_sft_has_no_curriculum_or_groups(data, tmp_path: Path) -> None:
    result = lab.run("sft", data, steps=3, policy_kwargs=TINY_POLICY, log_dir=str(tmp_path))
    assert result.steps == 3 and result.num_raises == 0
    assert math.isnan(result.zero_std_early) and math.isnan(result.all_fail_early) and math.isnan(result.final_tau)
    assert result.policy is None
    assert list(tmp_path.glob("sft_seed0/version_0/events.out.tfevents.*"))


@pytest.mark.parametrize(("method", "seed", "data_seed", "order"), [
    ("sft", 2, None, 2),        # a seed sets the data order, for SFT ...
    ("medloc", 2, None, 2),     # ... and for GRPO alike, so that the seeds' spreads compare
    ("medloc", 2, 5, 5),
])
def test_the_training_order_follows_the_data_seed(data, monkeypatch, method: str, seed: int,
                                                  data_seed: int | None, order: int) -> None:
    seen: list[int] = []
    sampler = data.train_sampler
    monkeypatch.setattr(data, "train_sampler", lambda *a, **k: seen.append(data.seed) or sampler(*a, **k))
    lab.run(method, data, steps=2, seed=seed, policy_kwargs=TINY_POLICY, data_seed=data_seed)
    assert seen and set(seen) == {order}
    assert data.seed == 0  # the caller's DataModule is left as it was


def test_the_prior_is_built_once_and_every_run_starts_from_it(data, tmp_path: Path) -> None:
    from medloc_lightning.metrics import GroundingMetrics

    prior = lab.Prior(n=40, steps=4, val_every=2)
    path, report = lab.build_prior(tmp_path / "prior", prior, data, size=64, batch_size=4, policy_kwargs=TINY_POLICY)
    assert report["fit"]["steps"] == 4 and report["recipe"]["source_preset"] == "easy"
    assert {"acc@0.3", "acc@0.5", "miou"} <= set(report["target_val"]["policy"])
    weights = Path(path) / "box_policy.pt"
    written = weights.stat().st_mtime_ns
    again = lab.build_prior(tmp_path / "prior", prior, data, size=64, batch_size=4, policy_kwargs=TINY_POLICY)
    assert again[0] == path and json.dumps(again[1]) == json.dumps(report)
    assert weights.stat().st_mtime_ns == written  # reused, not retrained
    # A run from the prior with a vanishing learning rate tests what the prior itself predicts.
    result = lab.run("medloc", data, steps=1, init=path, learning_rate=1e-12, regime="prior")
    data.setup("test")
    records = [data.datasets["test"][i] for i in range(len(data.datasets["test"]))]
    metrics = GroundingMetrics()
    with torch.no_grad():
        metrics.update(BoxPolicy.from_export(path).eval().predict(records)[1].float(),
                       torch.tensor([r["bbox"] for r in records], dtype=torch.float32))
    assert result.regime == "prior"
    assert result.test["miou"] == pytest.approx(float(metrics.compute()["miou"]), abs=1e-6)
    # Another target is another report: the prior is built again rather than reused with a stale one.
    other = lab.lab_data(str(tmp_path / "other"), n=30, size=64, batch_size=4, preset="easy")
    path_other, report_other = lab.build_prior(tmp_path / "prior", prior, other, size=64, batch_size=4,
                                               policy_kwargs=TINY_POLICY)
    assert report_other["recipe"]["target"]["n"] == 30 and report_other["recipe"]["target"]["preset"] == "easy"
    assert report["recipe"]["target"]["n"] == 50 and weights.stat().st_mtime_ns != written
    assert "NaN" not in (tmp_path / "prior" / "prior.json").read_text()  # undefined correlations are null
