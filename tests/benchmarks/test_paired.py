"""benchmarks/paired.py: per-image scores, the paired bootstrap and the signal fractions, on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def paired():
    from benchmarks import paired

    return paired


def test_per_image_scores_by_hand(paired) -> None:
    ious = [0.0, 0.5, 0.74, 0.75, 0.95, 1.0]
    assert paired.image_scores(ious, "acc@0.5").tolist() == [0, 1, 1, 1, 1, 1]
    assert paired.image_scores(ious, "acc@0.75").tolist() == [0, 0, 0, 1, 1, 1]
    # thresholds 0.50, 0.55, ..., 0.95 reached: none, 1 (0.50), 5 (0.50-0.70), 6 (0.50-0.75), 10, 10
    assert paired.image_scores(ious, "pseudo_map").tolist() == pytest.approx([0, 0.1, 0.5, 0.6, 1.0, 1.0])
    assert paired.metric_value(ious, "miou") == pytest.approx(sum(ious) / 6)
    assert paired.metric_value(ious, "pseudo_map") == pytest.approx(3.2 / 6)
    with pytest.raises(ValueError, match="unknown metric"):
        paired.image_scores(ious, "map")


def test_hits_are_decided_in_float32_like_the_metric(paired) -> None:
    # 0.7 as float64 is above float32(0.7); the metric compares float32 IoUs to float32 thresholds
    just_below = float(np.nextafter(np.float32(0.7), np.float32(0)))
    assert paired.image_scores([0.7, just_below], "acc@0.7").tolist() == [1, 0]


def test_a_constant_difference_has_a_point_interval(paired) -> None:
    b = np.full((3, 40), 0.2, dtype=np.float32)
    a = b + np.float32(0.3)
    out = paired.paired_difference(a, b, "miou", n_boot=500)
    assert out["diff"] == pytest.approx(0.3, abs=1e-6)
    assert out["lo"] == pytest.approx(0.3, abs=1e-6) and out["hi"] == pytest.approx(0.3, abs=1e-6)
    assert out["verdict"] == "better" and out["seeds_better"] == 3 and (out["seeds"], out["images"]) == (3, 40)
    flipped = paired.paired_difference(b, a, "miou", n_boot=500)
    assert flipped["verdict"] == "worse" and flipped["diff"] == pytest.approx(-0.3, abs=1e-6)


def test_images_are_resampled_as_by_hand(paired) -> None:
    # one seed, two images with differences 0 and 1: a draw is {0,0}, {0,1} or {1,1} with p = 1/4, 1/2, 1/4,
    # so the draws' mean is 0.5 and their 2.5% and 97.5% quantiles are 0 and 1
    a = np.array([[0.9, 0.9]], dtype=np.float32)
    b = np.array([[0.9, 0.1]], dtype=np.float32)
    out = paired.paired_difference(a, b, "acc@0.5", n_boot=4000)
    assert out["diff"] == 0.5 and (out["lo"], out["hi"]) == (0.0, 1.0)
    assert out["verdict"] == "no detectable difference"


def test_seeds_are_resampled_as_by_hand(paired) -> None:
    # two seeds, one better by 1 on every image and one worse by 1: a draw of seeds gives +1, 0 or -1 with
    # p = 1/4, 1/2, 1/4, whatever the images drawn
    a = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    b = 1 - a
    out = paired.paired_difference(a, b, "acc@0.5", n_boot=4000)
    assert out["diff"] == 0.0 and (out["lo"], out["hi"]) == (-1.0, 1.0) and out["seeds_better"] == 1
    rng = np.random.default_rng(0)
    draws = rng.multinomial(2, [0.5, 0.5], size=4000)
    assert math.isclose(np.mean(draws[:, 0] == 1), 0.5, abs_tol=0.03)  # the p = 1/2 of the middle case


def test_pairing_is_kept(paired) -> None:
    # images differ a lot, the methods by a small constant: a paired interval is tight and above 0, where
    # an unpaired one (the same draws for a, other draws for b) would straddle 0
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.9, size=(5, 300)).astype(np.float32)
    out = paired.paired_difference(base + np.float32(0.01), base, "miou", n_boot=2000)
    assert out["verdict"] == "better" and out["hi"] - out["lo"] < 1e-5


def test_shapes_must_match(paired) -> None:
    with pytest.raises(ValueError, match="one shape"):
        paired.paired_difference(np.zeros((2, 3)), np.zeros((3, 3)), "miou")


def test_signal_fractions_by_hand(paired) -> None:
    quarters = [{"groups": 10, "zero_std": 6, "all_fail": 5, "all_pass": 1},
                {"groups": 10, "zero_std": 2, "all_fail": 0, "all_pass": 2},
                {"groups": 0, "zero_std": 0, "all_fail": 0, "all_pass": 0},
                {"groups": 20, "zero_std": 4, "all_fail": 1, "all_pass": 3}]
    out = paired.signal_fractions(quarters)
    assert out["run"] == {"zero_std": 12 / 40, "all_fail": 6 / 40, "all_pass": 6 / 40}
    assert out["quarters"][0] == {"zero_std": 0.6, "all_fail": 0.5, "all_pass": 0.1}
    assert all(math.isnan(v) for v in out["quarters"][2].values())


def test_pooled_orders_rows_by_seed(paired) -> None:
    runs = [{"seed": 1, "ious": {"test": [0.1, 0.2]}}, {"seed": 0, "ious": {"test": [0.3, 0.4]}}]
    np.testing.assert_allclose(paired.pooled(runs, "test", [0, 1]), [[0.3, 0.4], [0.1, 0.2]], rtol=1e-6)
    with pytest.raises(ValueError, match="no run for seeds"):
        paired.pooled(runs, "test", [0, 2])


def test_interval_formatting(paired) -> None:
    assert paired.fmt_diff({"diff": 0.012, "lo": -0.003, "hi": 0.028}) == "+1.2 [−0.3, +2.8]"
