"""The breaking-point search (issue #19): brackets to a factor 1.25, beyond caps, integer kinds, from a grid."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ttfs_brian.search import FACTOR, SCALES, bracket


def level_row(level: float, loss: float, classes: int = 10, nominal: float = 0.98) -> dict:
    return {"level": level, "loss": loss, "accuracy": nominal - loss, "nominal_accuracy": nominal, "classes": classes}


def search(kind: str, loss_of, grid, target="loss_1pct", rounds: int = 40):
    """Run the bracket rule against a known loss curve until it closes; returns the bracket and the levels run."""
    levels = list(grid)
    for _ in range(rounds):
        b = bracket(kind, target, pd.DataFrame([level_row(level, loss_of(level)) for level in levels]))
        if b.next is None:
            return b, levels
        assert b.next not in levels, "a level proposed twice"
        levels.append(b.next)
    raise AssertionError("the search did not close")


JITTER_GRID = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.03, 0.05)


@pytest.mark.parametrize("true_level", [2e-4, 0.0123, 0.037, 0.7, 41.0])
def test_the_1pct_level_is_bracketed_to_a_factor_1_25(true_level):
    """A loss growing with the jitter crosses 1 % at ``true_level``, inside the grid or far beyond it."""
    def loss(sigma):
        return 0.01 * (sigma / true_level) ** 2

    b, levels = search("spike_jitter", loss, JITTER_GRID)
    assert b.status == "found" and b.below < true_level <= b.above * (1 + 1e-9)
    assert b.above / b.below <= FACTOR * 1.001
    assert len(levels) - len(JITTER_GRID) <= 12  # extension by x4, then bisection: a handful of levels


def test_half_chance_target_and_a_cap():
    """Half of the chance-corrected accuracy (10 classes, 98 %: 54 %); a kind that never gets there stops at its cap."""
    b, _ = search("alpha_mismatch", lambda s: min(0.88, 0.44 * s / 0.021), (5e-6, 1e-4, 5e-3), target="half_chance")
    assert b.status == "found" and b.below < 0.021 <= b.above
    never, levels = search("spike_jitter", lambda s: 0.0, JITTER_GRID)
    assert never.status == "beyond" and max(levels) == SCALES["spike_jitter"].high


def test_a_loss_already_at_the_smallest_level_searches_downwards():
    b, levels = search("input_jitter", lambda s: 0.01 * s / 1e-5, JITTER_GRID)  # 1 % at 1e-5 ms, below the grid
    assert b.status == "found" and b.below < 1e-5 <= b.above and min(levels) < 5e-5


def test_bits_are_searched_as_whole_numbers():
    b, levels = search("weight_bits", lambda bits: 0.2 if bits <= 5 else 0.0, (16, 12, 8))
    assert b.status == "found" and (b.below, b.above) == (6.0, 5.0)
    assert all(float(level).is_integer() for level in levels)


def test_zeta_is_searched_on_the_window_scale():
    """zeta shrinks the windows by 1 + zeta: the search runs on 1 / (1 + zeta) and keeps zeta > -1."""
    b, levels = search("zeta", lambda z: 0.05 if z <= -0.83 else 0.0, (-0.7, -0.5, 0.0, 0.5))
    assert b.status == "found" and b.above <= -0.83 < b.below
    assert (1 + b.below) / (1 + b.above) <= FACTOR * 1.001 and all(z > -1 for z in levels)


def test_proposals_come_from_the_rows_alone():
    """The same rows give the same proposal: what makes an interrupted search resume where it stopped."""
    rows = pd.DataFrame([level_row(level, 0.02 * level / 0.01) for level in JITTER_GRID])
    first, again = bracket("spike_jitter", "loss_1pct", rows), bracket("spike_jitter", "loss_1pct", rows.iloc[::-1])
    # 1 % at 0.005 ms, a grid level: the bracket is (0.001, 0.005] and its geometric mean comes next
    assert first == again and first.next == pytest.approx(math.sqrt(0.001 * 0.005), rel=1e-2)


def test_the_losing_level_is_the_mildest_one_whatever_way_the_level_runs():
    """A time constant does more damage the smaller it is, a jitter the larger: the level losing 1 % is the mildest
    losing one either way (:func:`ttfs_brian.search.severity`), and the harshest level is the other end."""
    from ttfs_brian.robustness import losing_levels

    def level(kind, value, verdict, loss):
        return dict(model="m", dataset="d", variant="exact", engine="analytic", kind=kind, level=value, verdict=verdict,
                    samples=500, trials=1, nominal_accuracy=0.97, loss=loss, loss_ci95=0.01, level_rel_min=0.1,
                    level_rel_max=0.2, samples_to_resolve=900 if verdict == "unresolved" else np.nan)

    summary = pd.DataFrame([level("leak", 1000.0, "holds", 0.0), level("leak", 300.0, "unresolved", 0.01),
                            level("leak", 100.0, "loses", 0.05), level("leak", 10.0, "loses", 0.9),
                            level("spike_jitter", 0.4, "loses", 0.6), level("spike_jitter", 0.1, "loses", 0.02),
                            level("spike_jitter", 0.05, "holds", 0.0)])
    table = losing_levels(summary).set_index("kind")
    assert table.loc["leak", "level_losing_1pct"] == 100.0 and table.loc["leak", "harshest_level_tested"] == 10.0
    assert table.loc["leak", "unresolved_below"] == 1 and table.loc["leak", "samples_to_resolve_1pct"] == 900
    assert table.loc["spike_jitter", "level_losing_1pct"] == 0.1
    assert table.loc["spike_jitter", "harshest_level_tested"] == 0.4
