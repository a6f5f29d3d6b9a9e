"""medloc_lightning.lab: the methods of the paper's tables as runnable specs, and one short real run of each kind."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medloc_lightning import lab
from medloc_lightning.curriculum import FixedThreshold, IntervalSchedule, ThresholdCurriculum
from medloc_lightning.policies.box import BoxPolicy

TINY_POLICY = {"image_size": 64, "channels": 16, "query_dim": 16, "vocab_buckets": 256}
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    module = lab.lab_data(str(tmp_path_factory.mktemp("lab") / "data"), n=50, size=64, batch_size=4)
    module.prepare_data()
    return module


def test_every_method_builds_its_schedule_for_a_run_length() -> None:
    for name, method in lab.METHODS.items():
        if method.schedule is None:
            assert name == "sft"
            continue
        schedule = method.schedule(1000)
        assert 0.0 < schedule.tau <= 1.0, name
    assert isinstance(lab.METHODS["medloc"].schedule(10), ThresholdCurriculum)
    assert isinstance(lab.METHODS["fixed_tau"].schedule(10), FixedThreshold)
    assert lab.METHODS["raw_iou"].reward == "iou" and lab.METHODS["v_triune"].reward == "gated_iou"


def test_blind_schedules_raise_at_fractions_of_the_run() -> None:
    schedule = lab.METHODS["fixed_aggressive"].schedule(200)
    assert isinstance(schedule, IntervalSchedule)
    raised = [step for step in range(1, 41) if schedule.observe([0.0] * 4)]
    assert raised == [10, 20, 30, 40]  # every 5% of 200 steps, whatever the IoUs


def test_unknown_method_is_rejected_with_the_choices(data) -> None:
    with pytest.raises(ValueError, match="unknown method 'medloc_r1'.*fixed_tau"):
        lab.run("medloc_r1", data, steps=1)


def test_a_grpo_run_records_every_step_and_counts_groups_early(data) -> None:
    result = lab.run("medloc", data, steps=STEPS, policy_kwargs=TINY_POLICY, return_policy=True)
    assert result.steps == STEPS and len(result.taus) == STEPS and len(result.hit_rates) == STEPS
    assert result.taus[0] == pytest.approx(0.3) and result.final_tau >= 0.3
    assert math.isnan(result.hit_rates[0]) and not math.isnan(result.hit_rates[-1])  # empty window, then filled
    assert {"acc@0.5", "acc@0.75", "pseudo_map", "miou"} <= set(result.test)
    # An all-fail group has equal (zero) rewards, so it is one of the zero-std groups.
    assert 0.0 <= result.all_fail_early <= result.zero_std_early <= 1.0
    assert isinstance(result.policy, BoxPolicy) and not result.policy.training
    as_dict = result.to_dict()
    assert "policy" not in as_dict
    json.dumps(as_dict)


def test_an_untrained_policy_under_a_strict_threshold_fails_every_group(data) -> None:
    # τ = 0.99 for the whole run: no box of a freshly initialised policy gets there, so every group is all-fail
    # and zero-std (the vanishing-gradient case the curriculum exists for).
    lab.METHODS["_strict"] = lab.Method("test only", lambda steps: FixedThreshold(0.99))
    try:
        result = lab.run("_strict", data, steps=STEPS, policy_kwargs=TINY_POLICY)
    finally:
        del lab.METHODS["_strict"]
    assert result.all_fail_early == 1.0 and result.zero_std_early == 1.0 and result.num_raises == 0


def test_sft_has_no_curriculum_or_groups(data, tmp_path: Path) -> None:
    result = lab.run("sft", data, steps=3, policy_kwargs=TINY_POLICY, log_dir=str(tmp_path))
    assert result.steps == 3 and result.num_raises == 0
    assert math.isnan(result.zero_std_early) and math.isnan(result.all_fail_early) and math.isnan(result.final_tau)
    assert result.policy is None
    assert list(tmp_path.glob("sft_seed0/version_0/events.out.tfevents.*"))
