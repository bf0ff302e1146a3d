"""Study statistics claim only what their samples hold (issue #19): intervals over samples, paired, with a floor."""
from __future__ import annotations

import numpy as np
import pytest

from ttfs_brian.intervals import floor_half_width, loss_verdict, mean_interval


def test_the_floor_is_what_n_samples_can_show():
    assert floor_half_width(20) == pytest.approx(0.168, abs=1e-3)  # one digit of 20 is 5 %: far from 1 %
    assert floor_half_width(1000) == pytest.approx(0.00369, abs=1e-5)
    nothing = mean_interval(np.zeros((4, 20)))  # 20 digits x 4 trials, no change at all
    assert nothing.mean == 0 and nothing.half == pytest.approx(floor_half_width(20))
    assert loss_verdict(nothing) == "unresolved" and not nothing.resolves()
    assert nothing.samples_to_resolve() >= 368  # Clopper-Pearson: ln(0.025) / ln(0.99)


def test_one_lost_digit_of_twenty_is_no_claim():
    """The Brian2 cells of the old report: 20 digits x 4 trials, one digit lost in every trial is a 5 % loss."""
    lost = np.zeros((4, 20))
    lost[:, 3] = 1
    interval = mean_interval(lost)
    assert interval.mean == pytest.approx(0.05) and interval.low < 0 and loss_verdict(interval) == "unresolved"


def test_verdicts_on_a_thousand_samples():
    rng = np.random.default_rng(0)
    concentrated = np.zeros((16, 1000))
    concentrated[:, :30] = 1  # 3 % of the samples lost in every trial
    assert loss_verdict(mean_interval(concentrated)) == "loses"
    scattered = (rng.random((16, 1000)) < 0.002).astype(float)  # 0.2 % of predictions flip, trial by trial
    interval = mean_interval(scattered)
    assert loss_verdict(interval) == "holds" and interval.resolves()
    assert loss_verdict(mean_interval(np.zeros((16, 1000)))) == "holds"


def test_the_interval_covers_the_true_loss():
    """Per-sample losses of different sizes, drawn afresh 400 times: the 95 % interval over samples covers the true
    mean loss in at least 90 % of the draws (its nominal 95 % with room for 400 draws), including the choice of
    test samples, not only the trial noise."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        fragile = rng.random(300) < 0.1  # a sample is fragile with probability 0.1 ...
        flip = np.where(fragile, 0.3, 0.0)  # ... and then lost in a trial with probability 0.3: E = 0.03
        lost = (rng.random((8, 300)) < flip).astype(float)
        interval = mean_interval(lost)
        covered += interval.low <= 0.03 <= interval.high
    assert covered / 400 >= 0.9, covered


def test_a_paired_difference_can_be_negative():
    gained = np.zeros((2, 400))
    gained[:, :40] = -1  # perturbed correct where the nominal network was wrong: a negative loss
    interval = mean_interval(gained)
    assert interval.mean == pytest.approx(-0.1) and interval.high < 0 and loss_verdict(interval) == "holds"
