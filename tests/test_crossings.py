"""The event-by-event solvers' shortcuts: merged simultaneous inputs and the direct leaky sum, each against the plain
computation it replaces."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ttfs_brian import crossings
from ttfs_brian.crossings import (decayed_cumsum, exponential_first_crossing, linear_first_crossing, merged_events)


def test_merged_events_sum_simultaneous_inputs_and_cover_every_row_once():
    rng = np.random.default_rng(3)
    times = torch.as_tensor(rng.integers(0, 6, (40, 30)).astype(np.float64))
    times[rng.random(times.shape) < 0.2] = torch.inf  # inputs that never arrive
    w = torch.as_tensor(rng.normal(size=times.shape))
    w[rng.random(times.shape) < 0.1] = 0.0  # and inputs that carry nothing
    g = torch.as_tensor(rng.random(times.shape))
    keep = times < 5.0
    seen = []
    for rows, t, (mw, mg) in merged_events(times, (w, g), keep):
        assert t.shape == mw.shape == mg.shape
        assert bool((t[:, 1:] >= t[:, :-1]).all())  # sorted, inf padding last
        assert bool((mw[torch.isinf(t)] == 0).all()) and bool((mg[torch.isinf(t)] == 0).all())
        for r, row_t, row_w, row_g in zip(rows.tolist(), t, mw, mg):
            seen.append(r)
            live = keep[r] & torch.isfinite(times[r]) & ((w[r] != 0) | (g[r] != 0))
            expected = sorted(set(times[r][live].tolist()))
            assert row_t[torch.isfinite(row_t)].tolist() == expected
            for k, at in enumerate(expected):  # each event holds the sum of the inputs arriving at its time
                same = live & (times[r] == at)
                assert row_w[k].item() == pytest.approx(w[r][same].sum().item(), abs=1e-12)
                assert row_g[k].item() == pytest.approx(g[r][same].sum().item(), abs=1e-12)
    assert sorted(seen) == list(range(40))


def _leaky_reference(w, grown, decayed):
    """``sum_{m <= k} w_m e^{grown_m - decayed_k}`` pair by pair (no exponent above 0: no overflow)."""
    k = w.shape[1]
    lower = np.tril(np.ones((k, k), dtype=bool))  # [k, m]: m <= k
    pair = np.where(lower[None], grown[:, None, :] - decayed[:, :, None], -np.inf)
    return (w[:, None, :] * np.exp(pair)).sum(axis=2)


@pytest.mark.parametrize("reach", [5.0, 3000.0])  # within the direct sum's range, and far beyond (log space)
def test_the_leaky_sum_matches_the_pairwise_sum_in_both_paths(reach):
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 12))
    grown = np.sort(rng.random((6, 12)) * reach, axis=1)
    grown[0] *= 1e-3  # one row that stays in range beside the others
    out = decayed_cumsum(torch.as_tensor(w), torch.as_tensor(grown), torch.as_tensor(grown)).numpy()
    expected = _leaky_reference(w, grown, grown)
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-12 * np.abs(w).sum())


def test_the_direct_and_log_space_leaky_sums_agree(monkeypatch):
    rng = np.random.default_rng(5)
    w = torch.as_tensor(rng.normal(size=(50, 40)))
    grown = torch.as_tensor(np.sort(rng.random((50, 40)) * 30.0, axis=1))
    direct = decayed_cumsum(w, grown, grown)
    monkeypatch.setattr(crossings, "DIRECT_LIMIT", 0.0)  # every row in log space
    logged = decayed_cumsum(w, grown, grown)
    np.testing.assert_allclose(direct.numpy(), logged.numpy(), rtol=0, atol=1e-12 * float(w.abs().sum(dim=1).max()))


def _split(arrivals: torch.Tensor, values: list[torch.Tensor], rng) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every input as two synapses arriving together, its values shared between them at random."""
    share = torch.as_tensor(rng.random(arrivals.shape))
    return torch.cat([arrivals, arrivals], dim=1), [torch.cat([v * share, v * (1 - share)], dim=1) for v in values]


def test_solvers_see_simultaneous_inputs_as_one(monkeypatch):
    """Splitting each synapse into two that arrive together changes no crossing (beyond rounding), and merging gives
    the crossings of the solvers on the raw inputs."""
    rng = np.random.default_rng(6)
    n, fan = 200, 16
    arrivals = torch.as_tensor(rng.integers(0, 8, (n, fan)) * 0.25)  # few distinct times: many ties
    w = torch.as_tensor(rng.normal(0.3, 0.5, (n, fan)))
    g = torch.as_tensor(rng.random((n, fan)) * 0.05)
    theta = torch.as_tensor(rng.random(n) + 0.2)
    alpha, beta = torch.full((n,), 0.1, dtype=torch.float64), torch.full((n,), 0.2, dtype=torch.float64)
    late, stop = torch.full((n,), 1.0, dtype=torch.float64), torch.full((n,), 1.5, dtype=torch.float64)
    split_a, (split_w, split_g) = _split(arrivals, [w, g], rng)

    def linear(a, ww, gg):
        return linear_first_crossing(a, ww, gg, alpha, beta, late, stop, theta, 0.0, 4.0, 1.0, 0.05)

    def exponential(a, ww):
        return exponential_first_crossing(a, ww, alpha, theta, 4.0, 1.0, 2.0)

    once = linear(arrivals, w, g)
    assert torch.isfinite(once).sum() > n // 4  # enough neurons cross to test something
    np.testing.assert_allclose(linear(split_a, split_w, split_g).numpy(), once.numpy(), rtol=0, atol=1e-12)
    once = exponential(arrivals, w)
    assert torch.isfinite(once).sum() > n // 4
    np.testing.assert_allclose(exponential(split_a, split_w).numpy(), once.numpy(), rtol=0, atol=1e-10)
    # and the solvers on the raw inputs, one column per synapse, unmerged and unbanded, agree
    merged_linear, merged_exponential = linear(arrivals, w, g), exponential(arrivals, w)

    def unmerged(times, values, keep):
        yield torch.arange(len(times)), torch.where(keep, times, torch.inf), tuple(torch.where(keep, v, 0.0)
                                                                                   for v in values)
    monkeypatch.setattr(crossings, "merged_events", unmerged)
    np.testing.assert_allclose(linear(arrivals, w, g).numpy(), merged_linear.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(exponential(arrivals, w).numpy(), merged_exponential.numpy(), rtol=0, atol=1e-10)
