"""What a robustness study's samples can claim: 95 % intervals on per-sample means, and the samples a claim needs.

The unit of evidence is the test sample. Every trial (seed) of a level runs on the same samples, so a quantity is
first averaged over the trials of each sample, ``y_i = mean_k v_ik`` (``v`` in [-1, 1]: correct or not, agreeing or
not, or a *paired* difference on the same sample and draws: lost against the unperturbed network, Brian2 against
the analytic engine), and the interval is Student's over the ``n`` samples,
``mean(y) +- t_{0.975, n-1} sd(y) / sqrt(n)``. That interval holds the trial-to-trial noise and the choice of test
samples alike. It cannot be narrower than what ``n`` samples can show at all: when none of ``n`` samples changed,
up to ``1 - 0.025^(1/n)`` of such samples could still change (Clopper-Pearson), 17 % for 20 samples and 0.37 % for
1,000, so every half-width is at least that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESOLUTION = 0.01
"""The effect the report asks about: an accuracy loss of 1 % (absolute)."""


def floor_half_width(n: int) -> float:
    """The narrowest half-width ``n`` samples allow: Clopper-Pearson's upper bound when none of them changed."""
    return 1.0 - ((1.0 - CONFIDENCE) / 2.0) ** (1.0 / n) if n > 0 else math.inf


@dataclass(frozen=True)
class Interval:
    """``mean +- half`` over ``samples`` per-sample means whose standard deviation is ``sd``."""

    mean: float
    half: float
    samples: int
    sd: float

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def resolves(self, effect: float = RESOLUTION) -> bool:
        """Whether the interval is narrow enough to tell an effect of ``effect`` from none."""
        return self.half < effect

    def samples_to_resolve(self, effect: float = RESOLUTION) -> int:
        """Samples that would resolve ``effect`` whatever its shape: the spread measured here, or that of an effect
        concentrated on a fraction ``effect`` of the samples, whichever is larger."""
        sd = max(self.sd if math.isfinite(self.sd) else 0.0, math.sqrt(effect * (1 - effect)))
        z = stats.norm.ppf(0.5 + CONFIDENCE / 2)
        by_spread = (z * sd / effect) ** 2
        by_floor = math.log((1 - CONFIDENCE) / 2) / math.log(1 - effect)
        return int(math.ceil(max(by_spread, by_floor)))


def mean_interval(per_trial: np.ndarray) -> Interval:
    """The interval of the module docstring for values ``(trials, samples)`` (or ``(samples,)``)."""
    values = np.atleast_2d(np.asarray(per_trial, dtype=np.float64)).mean(axis=0)
    n = values.size
    mean = float(values.mean()) if n else math.nan
    sd = float(values.std(ddof=1)) if n > 1 else math.inf
    by_t = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n) if n > 1 else math.inf
    return Interval(mean, float(max(by_t, floor_half_width(n))), n, sd)


def loss_verdict(loss: Interval, effect: float = RESOLUTION) -> str:
    """``"loses"``: the mean loss is at least ``effect`` and the interval excludes no loss; ``"holds"``: the whole
    interval lies below ``effect``; ``"unresolved"``: the samples cannot tell."""
    if loss.mean >= effect and loss.low > 0:
        return "loses"
    if loss.high < effect:
        return "holds"
    return "unresolved"
