import pytest

from medloc_lightning.curriculum import FixedThreshold, IntervalSchedule, ProgressSchedule, ThresholdSchedule


def test_all_schedules_share_the_interface():
    for s in (FixedThreshold(0.5), ProgressSchedule(), IntervalSchedule(every=3)):
        assert isinstance(s, ThresholdSchedule)
        s.observe([0.6, 0.2], progress=0.0)
        assert {"tau", "hit_rate", "reward_std", "iou_margin"} <= set(s.stats)
        assert isinstance(s.state_dict(), dict)


def test_fixed_threshold_never_moves_but_tracks_stats():
    s = FixedThreshold(0.5)
    assert not any(s.observe([1.0]) for _ in range(100))
    assert s.tau == 0.5 and s.stats["hit_rate"] == 1.0


@pytest.mark.parametrize(
    "progress,tau", [(0.0, 0.85), (0.05, 0.85), (0.10, 0.85), (0.11, 0.95), (0.25, 0.95), (0.26, 0.99), (1.0, 0.99)]
)
def test_v_triune_progress_schedule(progress, tau):
    s = ProgressSchedule()
    s.observe([0.5], progress=progress)
    assert s.tau == tau


def test_progress_schedule_starts_at_the_first_milestone_and_needs_progress():
    s = ProgressSchedule([(0.5, 0.3), (1.0, 0.6)])
    assert s.tau == 0.3
    with pytest.raises(ValueError, match="progress"):
        s.observe([0.5])


@pytest.mark.parametrize("milestones", [[], [(0.5, 0.3)], [(0.6, 0.3), (0.5, 0.4), (1.0, 0.5)], [(1.0, 1.3)]])
def test_progress_schedule_rejects_bad_milestones(milestones):
    with pytest.raises(ValueError, match="milestones"):
        ProgressSchedule(milestones)


def test_interval_schedule_raises_blindly_every_k_steps():
    s = IntervalSchedule(every=3, delta=0.2, tau_start=0.3, tau_target=0.8)
    outs = [s.observe([0.0]) for _ in range(12)]  # IoU 0 everywhere: a blind schedule raises anyway
    assert outs == [False, False, True] * 3 + [False] * 3
    assert s.tau == 0.8 and [e["step"] for e in s.events] == [3.0, 6.0, 9.0]


def test_interval_schedule_validation():
    with pytest.raises(ValueError, match="every"):
        IntervalSchedule(every=0)
    with pytest.raises(ValueError, match="tau_start"):
        IntervalSchedule(every=2, tau_start=0.9, tau_target=0.8)


@pytest.mark.parametrize("schedule,tau,match", [
    (ProgressSchedule([(0.5, 0.3), (1.0, 0.6)]), 0.45, r"none of the milestones' taus \[0.3, 0.6\]"),
    (IntervalSchedule(every=3, tau_start=0.3, tau_target=0.8), 0.9, r"outside \[0.3, 0.8\]"),
])
def test_a_saved_tau_the_schedule_cannot_reach_is_refused(schedule, tau, match):
    with pytest.raises(ValueError, match=match):
        schedule.load_state_dict({**schedule.state_dict(), "tau": tau})


def test_interval_schedule_can_raise_at_fractions_of_the_run():
    # +0.1 every 25% of the run, whatever the run's length: the clock is progress, not a step count
    for total in (8, 40, 2000):
        s = IntervalSchedule(every_fraction=0.25, delta=0.1, tau_start=0.3, tau_target=0.8)
        raised_at = [k for k in range(1, total + 1) if s.observe([0.0], progress=k / total)]
        assert raised_at == [total // 4, total // 2, 3 * total // 4, total], total
        assert s.tau == pytest.approx(0.7)


def test_interval_fraction_reaches_tau_target_exactly_and_stops():
    s = IntervalSchedule(every_fraction=0.1, delta=0.15, tau_start=0.3, tau_target=0.8)
    taus = []
    for k in range(1, 11):
        s.observe([0.0], progress=k / 10)
        taus.append(s.tau)
    assert taus == [0.45, 0.6, 0.75] + [0.8] * 7 and s.num_raises == 4


def test_interval_fraction_needs_progress_and_exactly_one_clock():
    with pytest.raises(ValueError, match="progress"):
        IntervalSchedule(every_fraction=0.1).observe([0.5])
    with pytest.raises(ValueError, match="exactly one"):
        IntervalSchedule()
    with pytest.raises(ValueError, match="exactly one"):
        IntervalSchedule(every=3, every_fraction=0.1)
    with pytest.raises(ValueError, match="every_fraction"):
        IntervalSchedule(every_fraction=0.0)
