"""One test per rule of MedLoc-R1's curriculum, on scripted IoU streams with hand-computed expectations."""
import io
import math
import re

import numpy as np
import pytest
import torch

from medloc_lightning.errors import CheckpointError
from medloc_lightning.curriculum import (CurriculumMismatchError, FixedThreshold, PiecewiseStep, ProgressSchedule,
                                       ThresholdCurriculum)


def make(**kw):
    kw.setdefault("window", 4)
    return ThresholdCurriculum(**kw)


# MedLoc-R1: Performance-Aware Curriculum Reward Scheduling for GRPO-Based Medical Visual Grounding (CVPR 2026),
# Sec. 3 and the implementation details: each default below is the value the paper states, with its words.
PAPER = [
    ("tau_start", 0.3, "Piecewise decay defaults to tau_0 = 0.3 -> tau_target = 0.8"),
    ("tau_target", 0.8, "Piecewise decay defaults to tau_0 = 0.3 -> tau_target = 0.8"),
    ("window", 30, "Sliding window length N = 30"),
    ("refresh", 0.5, "semi-preserved refresh: discarding the oldest half of samples in W_k"),
    ("min_margin", 0.10, "Delta (e.g., 0.10) remains constant"),
    ("checks", ("accuracy", "stability", "margin"), "C_k := (r_k >= P) and (sigma_k <= S) and (m_k >= Delta)"),
]


@pytest.mark.parametrize("name,value,source", PAPER, ids=[name for name, _, _ in PAPER])
def test_a_default_is_the_papers_value(name, value, source):
    assert getattr(ThresholdCurriculum(), name) == value, source


def test_the_default_steps_and_the_direction_of_the_adaptive_thresholds_are_the_papers():
    c = ThresholdCurriculum()
    assert c.tau == 0.3
    assert c.step.steps == (0.15, 0.10, 0.05)  # "steps delta(1) = 0.15, delta(2) = 0.10, delta(3) = 0.05"
    # The paper gives no values for P_tau and S_tau, only their direction: "as tau_k increases, P_tau_k is relaxed
    # [...] and S_tau_k is gradually expanded". The pairs (at tau_start, at tau_target) are ours.
    assert c.min_hit_rate[1] < c.min_hit_rate[0] and c.max_reward_std[1] > c.max_reward_std[0]


def test_window_holds_the_last_n_steps():
    c = make(window=3)
    for v in (0.0, 0.0, 0.0, 0.1, 0.2, 0.3):
        c.observe([v])
    s = c.stats
    assert s["window_fill"] == 3
    assert s["mean_iou"] == pytest.approx((0.1 + 0.2 + 0.3) / 3)


def test_hit_rate_is_the_mean_of_per_step_fractions_not_the_pooled_fraction():
    c = make(window=4)
    c.observe([0.5, 0.0, 0.0, 0.0])  # 1/4 hit at tau 0.3
    c.observe([0.9])  # 1/1 hit
    # per-step mean: (0.25 + 1) / 2 = 0.625; pooled would be 2/5 = 0.4
    assert c.stats["hit_rate"] == pytest.approx(0.625)


def test_reward_std_is_the_population_std_of_per_step_hit_rates():
    c = make(window=4)
    for ious in ([0.9, 0.9], [0.9, 0.0], [0.0, 0.0]):  # hit rates 1, 0.5, 0
        c.observe(ious)
    expected = math.sqrt(((1 - 0.5) ** 2 + 0 + (0 - 0.5) ** 2) / 3)  # population: divide by 3, not 2
    assert c.stats["reward_std"] == pytest.approx(expected)


def test_iou_margin_is_mean_of_per_step_means_minus_tau():
    c = make(window=4)
    c.observe([0.2, 0.4, 0.6, 0.8])  # mean 0.5
    c.observe([0.9])  # mean 0.9
    assert c.stats["iou_margin"] == pytest.approx((0.5 + 0.9) / 2 - 0.3)


def test_hit_uses_greater_or_equal():
    c = make(window=4)
    c.observe([0.3, 0.29999])
    assert c.stats["hit_rate"] == pytest.approx(0.5)


def test_stats_reflect_a_window_that_is_not_full():
    c = make(window=30)
    c.observe([0.6, 0.6])
    s = c.stats
    assert s["window_fill"] == 1 and s["hit_rate"] == 1.0 and s["reward_std"] == 0.0
    assert s["iou_margin"] == pytest.approx(0.3)
    assert c.tau == 0.3  # not evaluated: window not full


def test_empty_window_stats_are_nan():
    s = make().stats
    assert math.isnan(s["hit_rate"]) and math.isnan(s["reward_std"]) and math.isnan(s["iou_margin"])


def test_thresholds_interpolate_linearly_in_tau():
    c = make(tau_start=0.3, tau_target=0.8, min_hit_rate=(0.8, 0.6), max_reward_std=(0.1, 0.2))
    assert c.stats["min_hit_rate"] == pytest.approx(0.8)
    assert c.stats["max_reward_std"] == pytest.approx(0.1)
    c.load_state_dict({**c.state_dict(), "tau": 0.55})  # halfway
    assert c.tau_progress == pytest.approx(0.5)
    assert c.stats["min_hit_rate"] == pytest.approx(0.7)
    assert c.stats["max_reward_std"] == pytest.approx(0.15)
    c.load_state_dict({**c.state_dict(), "tau": 0.8})
    assert c.stats["min_hit_rate"] == pytest.approx(0.6)


def test_a_float_threshold_is_constant():
    c = make(min_hit_rate=0.5, max_reward_std=0.3)
    c.load_state_dict({**c.state_dict(), "tau": 0.7})
    assert c.stats["min_hit_rate"] == 0.5 and c.stats["max_reward_std"] == 0.3


def test_criterion_is_evaluated_only_when_the_window_is_full():
    c = make(window=4)
    raised = [c.observe([0.95] * 8) for _ in range(4)]
    assert raised == [False, False, False, True]
    assert c.tau == pytest.approx(0.45)


def _ready_window(c, ious):
    raised = False
    for _ in range(c.window):
        raised = c.observe(ious)
    return raised


def test_accuracy_check_blocks_and_can_be_disabled():
    # tau 0.3, P = 0.8: 3 of 4 IoUs at 1.0 -> r̄ = 0.75 < 0.8; σ = 0; m̄ = 0.75 - 0.3 = 0.45
    ious = [1.0, 1.0, 1.0, 0.0]
    assert not _ready_window(make(), ious)
    assert _ready_window(make(checks=("stability", "margin")), ious)


def test_stability_check_blocks_and_can_be_disabled():
    # alternate steps with hit rates 1.0 and 0.75: r̄ = 0.875 >= 0.8, σ = 0.125 > 0.10, m̄ large
    c, d = make(), make(checks=("accuracy", "margin"))
    outs_c, outs_d = [], []
    for i in range(4):
        ious = [1.0] * 4 if i % 2 == 0 else [1.0, 1.0, 1.0, 0.0]
        outs_c.append(c.observe(ious))
        outs_d.append(d.observe(ious))
    assert c.stats["reward_std"] == pytest.approx(0.125)
    assert not any(outs_c) and outs_d[-1]


def test_margin_check_blocks_and_can_be_disabled():
    # every IoU 0.35 >= tau: r̄ = 1, σ = 0, but m̄ = 0.05 < Δ = 0.10
    assert not _ready_window(make(), [0.35] * 4)
    assert _ready_window(make(checks=("accuracy", "stability")), [0.35] * 4)


def test_only_the_reward_check():
    # margin fails (0.35 - 0.3 = 0.05) and stability fails, yet accuracy alone raises
    c = make(checks=("accuracy",))
    for i in range(4):
        c.observe([0.35] * 4 if i % 2 else [0.35, 0.35, 0.35, 0.0])
    assert c.tau > 0.3


def test_raise_is_capped_at_tau_target():
    c = make(tau_start=0.7, tau_target=0.8, step=PiecewiseStep((0.15,)))
    assert _ready_window(c, [1.0] * 4)
    assert c.tau == 0.8


def test_piecewise_raises_land_exactly_on_the_paper_ladder():
    c = make(window=2)
    taus = []
    for _ in range(100):
        if c.observe([1.0] * 4):
            taus.append(c.tau)
    assert taus == [0.45, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8]


@pytest.mark.parametrize("refresh,window,kept", [(0.5, 30, 15), (1.0, 30, 0), (0.25, 30, 22), (0.25, 10, 7)])
def test_refresh_drops_the_oldest_round_half_up(refresh, window, kept):
    c = ThresholdCurriculum(window=window, refresh=refresh)
    for _ in range(window):
        c.observe([1.0])
    assert c.tau > 0.3
    assert c.stats["window_fill"] == kept


def test_refresh_keeps_the_newest_steps_and_rereads_them_against_the_new_tau():
    c = make(window=4, refresh=0.5)
    for v in (0.95, 0.95, 0.40, 0.40):  # newest two have IoU 0.4
        c.observe([v, 1.0])
    assert c.tau == pytest.approx(0.45)
    s = c.stats
    assert s["window_fill"] == 2
    assert s["mean_iou"] == pytest.approx(0.7)  # only the two newest steps: (0.4 + 1.0) / 2
    assert s["hit_rate"] == pytest.approx(0.5)  # 0.4 < 0.45 now: each kept step hits 1 of 2
    assert s["iou_margin"] == pytest.approx(0.7 - 0.45)


def test_after_a_refresh_the_window_must_fill_again():
    c = make(window=4, refresh=0.5)
    outs = [c.observe([1.0]) for _ in range(6)]
    assert outs == [False, False, False, True, False, True]


@pytest.mark.parametrize("refresh,spacing", [(1.0, 30), (0.5, 15), (0.25, 8)])
def test_on_a_stream_that_stays_ready_raises_come_every_refreshed_share_of_the_window(refresh, spacing):
    # docs/reproduction.md: the refresh only matters when raises come within one window of each other
    c = ThresholdCurriculum(window=30, refresh=refresh)
    steps = [step for step in range(1, 121) if c.observe([0.93] * 8)]
    assert steps[0] == 30
    assert np.diff(steps[:4]).tolist() == [spacing] * 3


def test_nothing_changes_at_tau_target():
    c = make(window=2, tau_start=0.7, tau_target=0.8)
    while c.tau < 0.8:
        c.observe([1.0])
    raises, fill = c.num_raises, c.stats["window_fill"]
    assert not any(c.observe([1.0]) for _ in range(10))
    assert c.tau == 0.8 and c.num_raises == raises
    assert c.stats["window_fill"] == 2 >= fill  # the window still tracks, nothing is dropped


def test_observe_accepts_any_shape_and_type():
    ref = make()
    ref.observe([0.1, 0.5, 0.9, 0.7])
    for ious in (torch.tensor([[0.1, 0.5], [0.9, 0.7]], dtype=torch.float64), np.array([[[0.1], [0.5], [0.9], [0.7]]]), [[0.1, 0.5], [0.9, 0.7]]):
        c = make()
        c.observe(ious)
        assert c.stats == ref.stats


@pytest.mark.parametrize("bad", [[], [float("nan")], [0.5, float("inf")], torch.tensor([]), [1.5], [-0.1]])
def test_bad_ious_raise(bad):
    with pytest.raises(ValueError, match="ious"):
        make().observe(bad)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"tau_start": 0.8, "tau_target": 0.8}, "tau_start"),
        ({"tau_start": 0.9, "tau_target": 0.5}, "tau_start"),
        ({"tau_start": -0.1}, "tau_start"),
        ({"tau_target": 1.2}, "tau_target"),
        ({"window": 1}, "window"),
        ({"window": 2.5}, "window"),
        ({"refresh": 0.0}, "refresh"),
        ({"refresh": 1.5}, "refresh"),
        ({"min_margin": -0.01}, "min_margin"),
        ({"checks": ("accuracy", "speed")}, "checks"),
        ({"min_hit_rate": (0.8, 0.6, 0.4)}, "min_hit_rate"),
        ({"min_hit_rate": 1.2}, "min_hit_rate"),
        ({"max_reward_std": -0.1}, "max_reward_std"),
    ],
)
def test_invalid_configuration_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ThresholdCurriculum(**kwargs)


def _stream(seed, n):
    rng = np.random.default_rng(seed)
    # IoUs that improve over time so that tau rises several times
    return [np.clip(rng.normal(0.3 + 0.7 * i / n, 0.1, size=8), 0, 1) for i in range(n)]


def test_state_dict_round_trip_continues_identically():
    stream = _stream(0, 300)
    a = ThresholdCurriculum(window=10)
    for ious in stream[:150]:
        a.observe(ious)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ThresholdCurriculum(window=10)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.stats == a.stats and b.events == a.events
    for ious in stream[150:]:
        assert a.observe(ious) == b.observe(ious)
        assert a.stats == b.stats
    assert a.num_raises >= 3  # the stream really exercised raises and refreshes


def test_state_dict_rejects_a_different_window():
    with pytest.raises(ValueError, match="window"):
        ThresholdCurriculum(window=10).load_state_dict(ThresholdCurriculum(window=30).state_dict())


# --- resume: a saved state is checked whole against the configured schedule --------------------------------

def _trained(**kw):
    c = ThresholdCurriculum(window=4, **kw)
    for ious in _stream(1, 40):
        c.observe(ious)
    assert c.num_raises >= 1 and c.tau > 0.3
    return c


def test_state_saves_the_kind_and_settings_as_plain_containers():
    state = _trained().state_dict()
    assert state["kind"] == "ThresholdCurriculum"
    assert state["settings"] == {"tau_start": 0.3, "tau_target": 0.8, "window": 4,
                                 "step": {"kind": "PiecewiseStep", "steps": [0.15, 0.10, 0.05]},
                                 "min_hit_rate": [0.8, 0.6], "max_reward_std": [0.1, 0.2], "min_margin": 0.1,
                                 "refresh": 0.5, "checks": ["accuracy", "stability", "margin"],
                                 "window_unit": "step", "rescore_on_raise": True}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == state


@pytest.mark.parametrize("other,match", [
    (FixedThreshold(0.5, window=4), "saved by a ThresholdCurriculum, the configured schedule is a FixedThreshold"),
    (ThresholdCurriculum(window=4, tau_target=0.5), "tau_target: saved 0.8, configured 0.5"),
    (ThresholdCurriculum(window=4, step=PiecewiseStep((0.1,))), "step: saved"),
    (ThresholdCurriculum(window=5), "window: saved 4, configured 5"),
])
def test_a_state_from_another_schedule_is_refused(other, match):
    before = other.state_dict()
    with pytest.raises(CurriculumMismatchError, match=match):
        other.load_state_dict(_trained().state_dict())
    assert other.state_dict() == before


def test_a_state_from_another_version_is_refused_by_name():
    """A state missing what this version saves, or holding a setting it does not have, is refused (nothing was
    released in another format, so no older one is read)."""
    state = _trained().state_dict()
    legacy = {k: v for k, v in state.items() if k not in ("kind", "settings")}
    with pytest.raises(CheckpointError, match=r"invalid curriculum state: it lacks \['kind', 'settings'\]"):
        make().load_state_dict(legacy)
    newer = {**state, "settings": {**state["settings"], "a_future_option": 1}}
    with pytest.raises(CurriculumMismatchError, match="a_future_option: saved 1, configured None"):
        make().load_state_dict(newer)


RESET_HINT = r"reset the curriculum explicitly \(ThresholdCurriculumCallback\(reset_on_mismatch=True\)\)"


@pytest.mark.parametrize("saved,configured,match", [
    (make(window_unit="group"), make(), "window_unit: saved 'group', configured 'step'"),
    (FixedThreshold(0.6, window=4), FixedThreshold(0.5, window=4), "tau: saved 0.6, configured 0.5"),
])
def test_every_mismatch_is_a_curriculum_mismatch_that_names_the_reset(saved, configured, match):
    state = saved.state_dict()
    before = configured.state_dict()
    with pytest.raises(CurriculumMismatchError, match=match) as err:
        configured.load_state_dict(state)
    assert re.search(RESET_HINT, str(err.value))
    assert configured.state_dict() == before


@pytest.mark.parametrize("change,match", [
    ({"tau": float("nan")}, "tau nan must be an IoU threshold"),
    ({"tau": 0.9}, "tau 0.9 lies outside"),
    ({"entries": [[5.0, -3.0]]}, r"window entry 0: ious must lie in \[0, 1\]"),
    ({"entries": [[0.5], []]}, "window entry 1: ious is empty"),
    ({"entries": [[0.5]] * 5}, "5 window entries for a window of 4"),
    ({"entries": [[float("nan")]]}, "window entry 0: ious contains NaN"),
    ({"num_raises": -1}, "num_raises -1"),
])
def test_a_corrupt_state_is_refused_and_changes_nothing(change, match):
    c = make()
    c.observe([0.4])
    before = c.state_dict()
    with pytest.raises(ValueError, match=match):
        c.load_state_dict({**_trained().state_dict(), **change})
    assert c.state_dict() == before


def test_a_failed_observe_records_nothing():
    class ZeroStep(PiecewiseStep):
        def __call__(self, num_raises, progress):
            return 0.0

    c = make(step=ZeroStep(), min_hit_rate=0.0, max_reward_std=1.0, min_margin=0.0)
    for _ in range(3):
        c.observe([0.9])
    before = c.state_dict()
    with pytest.raises(ValueError, match="non-positive step"):
        c.observe([0.9])  # fills the window, then the step schedule fails
    assert c.state_dict() == before and c.num_steps == 3


def test_a_bad_progress_is_refused_before_anything_changes():
    p = ProgressSchedule([(0.5, 0.2), (1.0, 0.7)], window=4)
    for bad in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="progress must be the fraction of training done"):
            p.observe([0.5], progress=bad)
    with pytest.raises(ValueError, match="needs progress"):
        p.observe([0.5])
    assert p.tau == 0.2 and p.num_steps == 0 and p.stats["window_fill"] == 0


# --- what one window entry is (window_unit) ------------------------------------------------------------------

def test_group_unit_makes_each_prompt_group_one_entry():
    ious = [[0.9, 0.9], [0.0, 0.9]]  # two prompts, G = 2: hit rates 1 and 0.5 at tau 0.3
    pooled, grouped = make(window=4), make(window=4, window_unit="group")
    pooled.observe(ious)
    grouped.observe(ious)
    assert pooled.stats["window_fill"] == 1 and grouped.stats["window_fill"] == 2
    assert pooled.stats["hit_rate"] == grouped.stats["hit_rate"] == pytest.approx(0.75)
    assert pooled.stats["reward_std"] == 0.0 and grouped.stats["reward_std"] == pytest.approx(0.25)
    assert pooled.num_steps == grouped.num_steps == 1


def test_group_unit_reads_rows_of_any_container_and_ragged_lists():
    ref = make(window=8, window_unit="group")
    ref.observe(np.array([[0.1, 0.5], [0.9, 0.7]]))
    for ious in (torch.tensor([[0.1, 0.5], [0.9, 0.7]]), [[0.1, 0.5], [0.9, 0.7]], [torch.tensor([0.1, 0.5]), (0.9, 0.7)],
                 np.array([[[0.1, 0.5], [0.9, 0.7]]])):
        c = make(window=8, window_unit="group")
        c.observe(ious)
        assert c.stats == ref.stats
    ragged = make(window=8, window_unit="group")
    ragged.observe([[0.9], [0.9, 0.0, 0.0, 0.0]])  # groups of 1 and 4: hit rates 1 and 0.25
    assert ragged.stats["window_fill"] == 2 and ragged.stats["hit_rate"] == pytest.approx(0.625)
    one = make(window=8, window_unit="group")
    one.observe(torch.tensor([0.9, 0.0]))  # a 1-D tensor is one group
    assert one.stats["window_fill"] == 1 and one.stats["hit_rate"] == 0.5


def test_group_unit_fills_the_window_in_prompts_and_decides_once_per_step():
    c = make(window=4, window_unit="group")
    raised = [c.observe([[1.0, 1.0]] * 3) for _ in range(3)]  # 3 prompts per step
    # full after 6 > 4 groups; each refresh leaves 2 groups, and the next step's 3 fill the window again
    assert raised == [False, True, True]
    assert c.events == [{"step": 2.0, "tau": 0.45}, {"step": 3.0, "tau": 0.55}]  # at most one raise per step
    assert c.stats["window_fill"] == 2


def test_per_group_std_carries_over_between_batch_sizes_and_per_step_std_does_not():
    # The same prompts, hit rates 1 and 0.5 in turn, seen one per step (B = 1) or two per step (B = 2).
    one, two = [[0.9, 0.9]], [[0.0, 0.9]]
    stds = {}
    for unit in ("step", "group"):
        b1, b2 = make(window=4, window_unit=unit), make(window=8 if unit == "step" else 4, window_unit=unit)
        for _ in range(2):
            b1.observe(one), b1.observe(two)
            b2.observe(one + two)
        stds[unit] = (b1.stats["reward_std"], b2.stats["reward_std"])
    assert stds["group"] == (pytest.approx(0.25), pytest.approx(0.25))
    assert stds["step"] == (pytest.approx(0.25), 0.0)  # pooling two prompts per step hides their spread


def test_window_unit_is_validated_and_checked_on_resume():
    with pytest.raises(ValueError, match="window_unit"):
        make(window_unit="prompt")
    grouped = make(window_unit="group")
    grouped.observe([[0.5, 0.5]])
    with pytest.raises(ValueError, match="window_unit"):
        make().load_state_dict(grouped.state_dict())


# --- what the refresh keeps (rescore_on_raise) -------------------------------------------------------------

def test_without_rescoring_the_kept_entries_keep_the_hits_they_earned():
    c = make(window=4, refresh=0.5, rescore_on_raise=False)
    for v in (0.95, 0.95, 0.40, 0.40):  # the newest two hit 1 of 2... at 0.3 they hit 2 of 2
        c.observe([v, 1.0])
    assert c.tau == pytest.approx(0.45)
    s = c.stats
    assert s["window_fill"] == 2 and s["hit_rate"] == 1.0  # as earned at 0.3; re-scored it would be 0.5
    assert s["iou_margin"] == pytest.approx(0.7 - 0.45)  # the margin is always against the current tau
    c.observe([0.40, 1.0])  # a new entry is scored at the new tau
    assert c.stats["hit_rate"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)


def test_as_earned_hits_survive_a_checkpoint():
    stream = _stream(1, 200)
    a = ThresholdCurriculum(window=10, rescore_on_raise=False)
    for ious in stream[:100]:
        a.observe(ious)
    b = ThresholdCurriculum(window=10, rescore_on_raise=False)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.stats == a.stats
    for ious in stream[100:]:
        assert a.observe(ious) == b.observe(ious)
        assert a.stats == b.stats
    assert a.num_raises >= 3


def test_kept_hits_as_earned_can_carry_the_next_raise():
    # Each step hits 3 of 4 at the raised tau 0.45 (0.75 < P = 0.8), but 4 of 4 at 0.3. Re-scored, the kept half
    # reads 0.75 too and tau stays; kept as earned, it lifts r̄ to (1 + 1 + 0.75 + 0.75) / 4 = 0.875 and tau rises
    # as soon as the window is full again.
    def raises(rescore):
        c = make(window=4, refresh=0.5, rescore_on_raise=rescore, min_hit_rate=0.8, checks=("accuracy",))
        steps = [step for step in range(1, 11) if c.observe([0.4, 1.0, 1.0, 1.0])]
        return steps, c.tau
    assert raises(rescore=True) == ([4], pytest.approx(0.45))
    assert raises(rescore=False)[0][:2] == [4, 6]
