"""The breaking-point search: where each model, variant, engine and kind starts to fail, bracketed to a factor 1.25.

Two targets per kind: the level at which the mean accuracy first loses 1 % (absolute, against the unperturbed
network on the same samples) and the level at which it falls to half of the chance-corrected accuracy,
``(accuracy - chance) / (nominal - chance) = 1/2`` (``chance`` = 1 / classes). Levels are searched on a log
scale of a *severity* that grows with the damage (:data:`SCALES`: the level itself for jitter, mismatch and loss;
``1 / (1 + zeta)`` for the window margin, ``1 / tau`` for a leak, ``2^-bits`` for quantization), starting from the
grid: below the first level that reaches a target and above the last that does not, the geometric mean is tried
next, until the two are within a factor :data:`FACTOR` (adjacent for bits); without a level that reaches it, the
search goes up by :data:`STEP` per round, up to the kind's cap. Proposals depend only on the rows already stored,
so an interrupted search resumes where it stopped and a rerun computes nothing it has.

Decisions use the mean over the level's samples and trials; the report gives every bracket end its 95 % interval
(:mod:`ttfs_brian.intervals`), and says when the samples cannot resolve 1 %.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .perturb import TIME_CONSTANTS

FACTOR = 1.25
"""Bracket ratio (in severity) at which a target counts as found."""
STEP = 4.0
"""Severity factor per round when no tested level reaches a target (or when the lowest one already does)."""
MAX_ROUNDS = 40
TARGETS = ("loss_1pct", "half_chance")
LOSS = 0.01


def severity(kind: str, level: float) -> float:
    """A kind's level as a severity, larger for more damage: a smaller margin ``zeta``, time constant (leak,
    ``synaptic_tau``) or bit count does more; for every other kind, a larger level."""
    if kind == "zeta":
        return 1.0 / (1.0 + level)
    if kind in TIME_CONSTANTS:
        return 1.0 / level
    if kind in ("weight_bits", "time_bits"):
        return 2.0 ** -level
    return abs(level)


@dataclass(frozen=True)
class Scale:
    """How a kind's level maps to a severity (larger: more damage), and the severities the search may visit."""

    kind: str
    low: float
    high: float

    def severity(self, level: float) -> float:
        return severity(self.kind, level)

    def level(self, severity: float) -> float:
        """The level of a severity, rounded so that a rerun proposes the same key (3 significant digits; whole
        bits; zeta to 4 decimals)."""
        if self.kind == "zeta":
            return round(1.0 / severity - 1.0, 4)
        if self.kind in TIME_CONSTANTS:
            return _significant(1.0 / severity)
        if self.kind in ("weight_bits", "time_bits"):
            return float(round(-math.log2(severity)))
        return _significant(severity)

    @property
    def integer(self) -> bool:
        return self.kind in ("weight_bits", "time_bits")


def _significant(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")


SCALES: dict[str, Scale] = {kind: Scale(kind, low, high) for kind, (low, high) in {
    "input_jitter": (1e-6, 100.0), "spike_jitter": (1e-6, 100.0), "delay_mismatch": (1e-6, 100.0),
    "alpha_mismatch": (1e-8, 100.0), "threshold_mismatch": (1e-8, 100.0), "weight_noise": (1e-8, 100.0),
    "drop": (1e-6, 1.0), "release_failure": (1e-6, 1.0), "zeta": (0.1, 1000.0), "leak": (1e-6, 1e3),
    "synaptic_tau": (1e-6, 1e3), "conductance": (1e-4, 0.99), "weight_bits": (2.0 ** -24, 0.5),
    "time_bits": (2.0 ** -24, 0.5),
}.items()}
"""Severity bounds per kind: the search reports "beyond" a cap it reached without failing."""


def reached(target: str, row: Any) -> bool:
    """Whether an aggregated level (a row of :func:`ttfs_brian.robustness.aggregate`) reaches ``target``."""
    if target == "loss_1pct":
        return row.loss >= LOSS
    chance = 1.0 / row.classes
    return (row.accuracy - chance) <= 0.5 * (row.nominal_accuracy - chance)


@dataclass(frozen=True)
class Bracket:
    """One target of one group: ``status`` is ``found`` (``below`` < target level <= ``above``, within
    :data:`FACTOR`), ``open`` (``next`` to try), ``beyond`` (not reached up to ``below``, the cap), or ``under``
    (reached at ``above``, the lowest severity allowed)."""

    target: str
    status: str
    below: float | None
    above: float | None
    next: float | None


def bracket(kind: str, target: str, levels: pd.DataFrame) -> Bracket:
    """The bracket of ``target`` from the aggregated levels of one group (columns of
    :func:`ttfs_brian.robustness.aggregate`), and the level to try next if it is still open."""
    scale = SCALES[kind]
    points = sorted((scale.severity(row.level), row.level, reached(target, row)) for row in levels.itertuples())
    first = next((i for i, p in enumerate(points) if p[2]), None)
    if first is None:
        top = points[-1][0] if points else scale.low
        if top >= scale.high * (1 - 1e-9):
            return Bracket(target, "beyond", points[-1][1] if points else None, None, None)
        return Bracket(target, "open", points[-1][1] if points else None, None,
                       scale.level(min(top * STEP, scale.high)))
    above = points[first]
    if first == 0:
        if above[0] <= scale.low * (1 + 1e-9):
            return Bracket(target, "under", None, above[1], None)
        return Bracket(target, "open", None, above[1], scale.level(max(above[0] / STEP, scale.low)))
    below = points[first - 1]
    if scale.integer:
        done = abs(scale.level(below[0]) - scale.level(above[0])) <= 1
    else:
        done = above[0] / below[0] <= FACTOR * (1 + 1e-9)
    if done:
        return Bracket(target, "found", below[1], above[1], None)
    middle = scale.level(math.sqrt(below[0] * above[0]))
    if middle in (below[1], above[1]):  # rounding: nothing between them to try
        return Bracket(target, "found", below[1], above[1], None)
    return Bracket(target, "open", below[1], above[1], middle)


GROUP = ["model", "dataset", "variant", "engine", "kind"]


def brackets(summary: pd.DataFrame) -> list[tuple[tuple, Bracket]]:
    """Every group's brackets, both targets (``summary``: :func:`ttfs_brian.robustness.aggregate`)."""
    out = []
    for key, levels in summary.groupby(GROUP):
        kind = key[-1]
        if kind not in SCALES:
            continue
        out += [(key, bracket(kind, target, levels)) for target in TARGETS]
    return out


def proposals(study, rows: pd.DataFrame) -> list[tuple[tuple[str, str, str, str], float]]:
    """The levels to run next: ``((model, engine, variant, kind), level)`` for every open bracket of the study's
    ``breaking_points`` engines whose levels are complete (every trial and shard in ``rows``)."""
    from .robustness import aggregate

    if rows.empty:
        return []
    summary = aggregate(rows)
    names = {study.resolve(model)[:2]: model for model in study.models}
    wanted = []
    for (arch, dataset, variant, engine, kind), b in brackets(summary):
        model = names.get((arch, dataset))
        if (model is None or engine not in study.breaking_points or variant not in study.variants
                or kind not in study.kinds or b.next is None):
            continue
        item = ((model, engine, variant, kind), b.next)
        if item not in wanted:
            wanted.append(item)
    return wanted
