"""Early firing (SPEC section 3) and the event-driven first-crossing computation."""
import numpy as np
import torch

import ttfs_brian
from ttfs_brian.analytic import first_crossing
from ttfs_brian.network import Layer, TTFSNetwork
from ttfs_brian.projection import Projection


def spec_example_network() -> TTFSNetwork:
    """tau_c = 1, input window [0, 1]: J = (100, -150, 50.5) arriving at t = (0, 0.5, 0.9), theta = 46.07."""
    layers = {
        "input": Layer("input", "input", (3,), 0.0, 1.0, arrays={"low": np.zeros(()), "high": np.ones(())}),
        "hidden": Layer("hidden", "neuron", (1,), 1.0, 3.0, (Projection("input", "dense", np.array([[100.0, -150.0, 50.5]])),),
                        ("hidden",), {}, {"bias": np.zeros(1), "threshold": np.array([46.07]), "scale": np.ones(1)}),
        "out": Layer("out", "output", (2,), 3.0, 3.0, (Projection("hidden", "dense", np.array([[1.0], [-1.0]])),), (),
                     {}, {"bias": np.zeros(2), "drive": np.zeros(2)}),
    }
    return TTFSNetwork("exact", 1.0, layers, "out")


def test_spec_example_is_detected_and_timed_exactly():
    net = spec_example_network()
    x = np.array([[1.0, 0.5, 0.1]])  # spike times t = 1 - x = (0, 0.5, 0.9)
    res = ttfs_brian.simulate(net, x)
    row = res.report.set_index("layer").loc["hidden"]
    assert row["early_fired"] == 1 and row["clipped"] == 0
    assert res.flagged.tolist() == [True]
    # V(t) = t + 100 t until the second input at 0.5, where V = 50.5 > theta: crossing at theta / 101
    assert abs(res.spike_times["hidden"][0, 0] - 46.07 / 101) < 1e-12
    # the closed form alone would have put the spike inside the window, after t_min = 1
    closed = 1.0 + (46.07 - (1 + 100 * 1 - 150 * 0.5 + 50.5 * 0.1)) / (1 + 0.5)
    assert closed > 1.0


def test_reordered_inputs_do_not_fire_early():
    net = spec_example_network()
    res = ttfs_brian.simulate(net, np.array([[0.1, 1.0, 0.5]]))  # the inhibitory spike arrives first
    assert res.report.set_index("layer").loc["hidden", "early_fired"] == 0
    assert not res.flagged.any()


def _brute_force(inputs, weights, theta, b_in, steps=200_000):
    t = np.linspace(0.0, b_in, steps + 1)
    arrival = b_in - inputs
    v = t + (weights[None, :] * np.clip(t[:, None] - arrival[None, :], 0, None)).sum(axis=1)
    hit = np.nonzero(v >= theta)[0]
    return t[hit[0]] if len(hit) else np.inf


def test_first_crossing_matches_time_stepping():
    rng = np.random.default_rng(1)
    k, fan_in, b_in = 200, 7, 1.5
    inputs = rng.uniform(0, b_in, (k, fan_in))
    weights = rng.normal(0, 3, (k, fan_in))
    theta = rng.uniform(-0.2, 4, k)
    got = first_crossing(torch.as_tensor(inputs), torch.as_tensor(weights), torch.as_tensor(theta), b_in).numpy()
    expected = np.array([_brute_force(inputs[i], weights[i], theta[i], b_in) for i in range(k)])
    assert np.isinf(got).sum() == np.isinf(expected).sum() > 0
    finite = np.isfinite(expected)
    assert np.max(np.abs(got[finite] - expected[finite])) < 2 * b_in / 200_000


def test_cheap_bound_never_misses_an_early_spike():
    """Every neuron, checked event by event, must agree with the engine's bound-filtered answer."""
    rng = np.random.default_rng(7)
    n_in, n_hidden, n = 6, 40, 300
    weight = rng.normal(0, 30, (n_hidden, n_in))
    layers = {
        "input": Layer("input", "input", (n_in,), 0.0, 1.0, arrays={"low": np.zeros(()), "high": np.ones(())}),
        "hidden": Layer("hidden", "neuron", (n_hidden,), 1.0, 2.0, (Projection("input", "dense", weight),), ("hidden",),
                        {}, {"bias": np.zeros(n_hidden), "threshold": rng.uniform(1, 40, n_hidden),
                             "scale": np.ones(n_hidden)}),
        "out": Layer("out", "output", (2,), 2.0, 2.0, (Projection("hidden", "dense", np.ones((2, n_hidden))),), (),
                     {}, {"bias": np.zeros(2), "drive": np.zeros(2)}),
    }
    net = TTFSNetwork("exact", 1.0, layers, "out")
    x = rng.random((n, n_in))
    res = ttfs_brian.simulate(net, x)
    crossing = first_crossing(torch.as_tensor(np.repeat(x, n_hidden, axis=0)),
                              torch.as_tensor(np.tile(weight, (n, 1))),
                              torch.as_tensor(np.tile(layers["hidden"].arrays["threshold"], n)), 1.0).numpy()
    crossing = crossing.reshape(n, n_hidden)
    slope = 1 + weight.sum(axis=1)
    y_closed = 1.0 - (layers["hidden"].arrays["threshold"] - 1.0 - x @ weight.T) / slope
    # clipped: the closed form's value exceeds the window; a neuron whose slope after its inputs is <= 0 has no
    # closed form (not_rising), so its crossing before t_min is early firing
    expected_early = (crossing < 1.0) & ~((slope > 0) & (y_closed > 1.0))
    assert expected_early.sum() > 0 and (slope <= 0).sum() > 0
    row = res.report.set_index("layer").loc["hidden"]
    assert row["early_fired"] == expected_early.sum() and row["not_rising"] == (slope <= 0).sum()
    early_times = res.spike_times["hidden"][expected_early]
    np.testing.assert_allclose(early_times, crossing[expected_early], atol=1e-12)
