import math

import pytest

from medloc_lightning.curriculum import CosineStep, LinearStep, PiecewiseStep, ThresholdCurriculum


def test_piecewise_uses_the_kth_step_then_the_last():
    s = PiecewiseStep((0.15, 0.10, 0.05))
    assert [s(k, 0.0) for k in range(5)] == [0.15, 0.10, 0.05, 0.05, 0.05]


def test_linear_step():
    s = LinearStep(delta0=0.2, min_step=0.05)
    assert s(0, 0.0) == pytest.approx(0.2)
    assert s(3, 0.5) == pytest.approx(0.1)
    assert s(9, 0.9) == pytest.approx(0.05)  # 0.2 * 0.1 = 0.02 -> floored at min_step


def test_cosine_step():
    s = CosineStep(delta0=0.2, min_step=0.04)
    assert s(0, 0.0) == pytest.approx(0.2)
    assert s(0, 0.5) == pytest.approx(0.04 + 0.16 * 0.5)
    assert s(0, 1.0) == pytest.approx(0.04)
    assert s(0, 0.25) == pytest.approx(0.04 + 0.16 * (1 + math.cos(math.pi / 4)) / 2)


def test_curriculum_feeds_progress_at_the_current_tau_to_the_step():
    # tau 0.3 -> p 0 -> delta 0.2 -> 0.5 ; p = 0.4 -> delta 0.2 * 0.6 = 0.12 -> 0.62
    c = ThresholdCurriculum(window=2, step=LinearStep(0.2, 0.01))
    taus = []
    while len(taus) < 2:
        if c.observe([1.0]):
            taus.append(c.tau)
    assert taus == [pytest.approx(0.5), pytest.approx(0.62)]


@pytest.mark.parametrize(
    "factory,name",
    [
        (lambda: PiecewiseStep(()), "steps"),
        (lambda: PiecewiseStep((0.1, -0.1)), "steps"),
        (lambda: LinearStep(0.0, 0.0), "delta0"),
        (lambda: LinearStep(0.1, 0.2), "min_step"),
        (lambda: CosineStep(0.1, -1.0), "min_step"),
        (lambda: CosineStep(0.1, 0.2), "must not exceed delta0"),
        (lambda: LinearStep(float("inf"), 0.05), "delta0"),
    ],
)
def test_invalid_steps(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()
