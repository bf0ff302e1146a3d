"""Biophysical synapses (issue #21): each new kind against an independent computation, and both engines alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import solve_ivp

import ttfs_brian
from ttfs_brian.analytic import simulate_analytic
from ttfs_brian.brian import Simulator
from ttfs_brian.comparison import compare
from ttfs_brian.errors import InputError
from ttfs_brian.events import inputs_in_crossing_step
from ttfs_brian.network import Layer, TTFSNetwork
from ttfs_brian.perturb import Perturbation, delay_offsets, perturb_network, release_failures
from ttfs_brian.projection import Projection

TOL_MS = 1e-9


def one_layer(weight: np.ndarray, theta: np.ndarray, variant: str = "exact", t_max: float = 3.0) -> TTFSNetwork:
    """Inputs spiking in [0, 1] into one dense hidden layer (window [1, t_max]) and a readout."""
    n_out, n_in = weight.shape
    layers = {
        "input": Layer("input", "input", (n_in,), 0.0, 1.0, arrays={"low": np.zeros(n_in), "high": np.ones(n_in)}),
        "h": Layer("h", "neuron", (n_out,), 1.0, t_max, (Projection("input", "dense", weight),),
                   arrays={"bias": np.zeros(n_out), "threshold": theta, "scale": np.ones(n_out)}),
        "out": Layer("out", "output", (2,), t_max, t_max, (Projection("h", "dense", np.ones((2, n_out))),),
                     arrays={"bias": np.zeros(2), "drive": np.zeros(2)}),
    }
    return TTFSNetwork(variant, 1.0, layers, "out", dt=0.05)


def integrate(rhs, arrivals, theta, end):
    """The first crossing of ``theta`` by ``v(0) = 0``, ``dv/dt = rhs(t, v)``, by DOP853 between arrivals."""
    def crossing(t, y):
        return y[0] - theta
    crossing.terminal, crossing.direction = True, 1
    edges = np.unique(np.concatenate([[0.0], np.clip(arrivals, 0, end), [end]]))
    v = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        sol = solve_ivp(rhs, (a, b), [v], events=crossing, rtol=1e-12, atol=1e-13, method="DOP853")
        if sol.t_events[0].size:
            return sol.t_events[0][0]
        v = sol.y[0, -1]
    return np.inf


@pytest.mark.parametrize("kind,level", [("synaptic_tau", 0.3), ("synaptic_tau", 3.0), ("conductance", 0.3),
                                        ("conductance", 0.7)])
def test_a_neuron_crosses_where_a_fine_integration_says(kind, level):
    """Random excitatory and inhibitory inputs onto 60 ``exact`` neurons: the engine's spike times against an
    adaptive Runge-Kutta integration of each neuron's own equation (tolerance 1e-12)."""
    rng = np.random.default_rng(1)
    weight = rng.normal(0.2, 0.8, (60, 5))
    theta = rng.uniform(0.3, 1.5, 60)
    net = one_layer(weight, theta)
    x = rng.random((1, 5))
    p = Perturbation(kind, level)
    got = simulate_analytic(net, x, perturbation=p).spike_times["h"][0]
    arrivals = 1.0 - x[0]  # t_on = 0: the input window
    q = 1 / 7
    for i in range(60):
        w = weight[i]
        if kind == "synaptic_tau":
            def rhs(t, v, w=w):
                return [1.0 + np.sum(w * np.exp(-(t - arrivals) / level) * (t >= arrivals))]
        else:
            e = np.where(w > 0, theta[i] / level, -q * theta[i] / level)
            def rhs(t, v, w=w, e=e):
                return [1.0 + np.sum(w * (1 - v[0] / e) * (t >= arrivals))]
        expected = min(integrate(rhs, arrivals, theta[i], 3.0), 3.0)  # exact: forced at t_max
        assert abs(got[i] - expected) < 1e-8, (i, got[i], expected)


def test_level_zero_and_its_limits_are_the_step_synapse():
    rng = np.random.default_rng(2)
    net = one_layer(rng.normal(0.2, 0.5, (20, 4)), rng.uniform(0.5, 1.5, 20))
    x = rng.random((3, 4))
    plain = simulate_analytic(net, x)
    for p in (Perturbation("synaptic_tau", np.inf), Perturbation("conductance", 0.0), Perturbation("delay_mismatch", 0),
              Perturbation("release_failure", 0.0)):
        assert p.is_identity
        np.testing.assert_allclose(simulate_analytic(net, x, perturbation=p).spike_times["h"], plain.spike_times["h"],
                                   rtol=0, atol=1e-12)
    far = simulate_analytic(net, x, perturbation=Perturbation("synaptic_tau", 1e7)).spike_times["h"]
    weak = simulate_analytic(net, x, perturbation=Perturbation("conductance", 1e-7)).spike_times["h"]
    assert np.abs(far - plain.spike_times["h"]).max() < 1e-5 and np.abs(weak - plain.spike_times["h"]).max() < 1e-5


def test_delays_obey_their_law():
    """Drawn once per trial per synapse: N(0, sigma^2) truncated at -latency (no spike arrives before it was sent),
    rounded to the network's dt; the engine's arrivals are the departures plus them."""
    rng = np.random.default_rng(3)
    net = one_layer(rng.normal(0.2, 0.5, (400, 50)), rng.uniform(0.5, 1.5, 400))
    layer = net.layers["h"]
    pre, post = np.meshgrid(np.arange(50), np.arange(400))
    sigma, latency = 0.4, 0.2
    p = Perturbation("delay_mismatch", sigma, seed=4, latency_ms=latency)
    delta = delay_offsets(p, perturb_network(net, [p]), layer, 0, pre, post)
    assert delta.min() >= -latency - 1e-12 and np.allclose(delta / 0.05, np.round(delta / 0.05))
    assert np.array_equal(delta, delay_offsets(p, net, layer, 0, pre, post))  # a pure function of the synapse
    truncated = stats.truncnorm(-latency / sigma, np.inf, scale=sigma)
    assert abs(delta.mean() - truncated.mean()) < 0.01 and abs(delta.std() - truncated.std()) < 0.02
    # one input, one synapse: the spike moves by exactly its synapse's delay
    single = one_layer(np.array([[0.5]]), np.array([2.0]))  # crosses after its one input arrived
    q = Perturbation("delay_mismatch", 0.3, seed=5, latency_ms=latency)
    shift = delay_offsets(q, single, single.layers["h"], 0, np.array([0]), np.array([0]))[0]
    x = np.array([[0.3]])
    moved = simulate_analytic(single, x, perturbation=q).spike_times["h"][0, 0]
    plain = simulate_analytic(single, x, perturbation=Perturbation("delay_mismatch", 0.0, latency_ms=latency))
    # exact neuron, one input of weight J = 0.5 arriving shift later: the crossing moves by J shift / (1 + J)
    assert moved - plain.spike_times["h"][0, 0] == pytest.approx(0.5 * shift / 1.5, abs=1e-12)


def test_releases_fail_independently_at_their_rate():
    rng = np.random.default_rng(6)
    net = one_layer(rng.normal(0.2, 0.5, (30, 40)), rng.uniform(0.5, 1.5, 30), variant="sparse")
    layer = net.layers["h"]
    level = 0.3
    p = Perturbation("release_failure", level, seed=7)
    pre, post = np.meshgrid(np.arange(40), np.arange(30))
    failed = np.stack([release_failures(p, layer, 0, pre, post, np.array([s])) for s in range(200)])
    assert abs(failed.mean() - level) < 0.01
    # in one sample, independent between synapses (pairs fail together at level^2); each synapse at its rate
    assert stats.binomtest(int(failed[0].sum()), failed[0].size, level).pvalue > 1e-3
    assert stats.binomtest(int(failed[:, 3, 5].sum()), 200, level).pvalue > 1e-3
    pairs = failed[:, :, :-1] & failed[:, :, 1:]
    assert abs(pairs.mean() - level ** 2) < 0.01
    # sparse: v(t_min) is the weighted sum of the inputs whose release succeeded
    x = rng.random((3, 40))
    res = simulate_analytic(net, x, perturbation=p)
    w = layer.projections[0].weight
    for s in range(3):
        kept = ~release_failures(p, layer, 0, pre, post, np.array([s]))
        v = (w * kept * x[s]).sum(axis=1)
        window = net.window_length(layer)
        value = window - (layer.arrays["threshold"] - v)  # above the window: fires at t_min (clipped)
        expected = np.where(value > 0, layer.t_max - np.minimum(value, window), np.nan)
        np.testing.assert_allclose(res.spike_times["h"][s], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["exact", "sparse"])
def test_brian2_twins_every_synapse_kind(variant, tmp_path):
    """synaptic_tau, delay_mismatch and release_failure in cpp_standalone (one binary for all, every level and
    seed through run_args) against the analytic engine, spike for spike where Brian2 can time every crossing."""
    from test_perturb import conv_net, residual_net

    rng = np.random.default_rng(8)
    for name, make, shape in (("conv", conv_net, (1, 6, 6)), ("residual", residual_net, (1, 8, 8))):
        x = rng.random((40, *shape)).astype(np.float32)
        net = ttfs_brian.convert(make(), x, variant=variant, dt=0.05)
        # a compiled network is timed for one latency: the delays' (0.1 ms) on one binary, the others on another
        latency = {"latency_ms": 0.1}
        plain = Simulator(net, device="cpp_standalone", dt=0.05, build_dir=tmp_path / name,
                          perturbations=[Perturbation("synaptic_tau", 1.0), Perturbation("release_failure", 0.2)])
        late = Simulator(net, device="cpp_standalone", dt=0.05, build_dir=tmp_path / f"{name}_late",
                         perturbations=[Perturbation("delay_mismatch", 0.1, **latency)])
        compared = 0
        for sim, p in [(plain, Perturbation("synaptic_tau", 3.0)), (plain, Perturbation("synaptic_tau", 0.4)),
                       (late, Perturbation("delay_mismatch", 0.1, seed=1, **latency)),
                       (late, Perturbation("delay_mismatch", 0.05, seed=2, **latency)),
                       (plain, Perturbation("release_failure", 0.1, seed=3)),
                       (plain, Perturbation("release_failure", 0.4, seed=4)),
                       (plain, [Perturbation("synaptic_tau", 1.0), Perturbation("release_failure", 0.2, seed=5)])]:
            # 6 samples: 4 replicas x 2 rounds, where a delay set per run must reach the spike queues of every round
            a = simulate_analytic(net, x[:6], perturbation=p)
            b = sim.run(x[:6], perturbation=p)
            same = inputs_in_crossing_step(net, a, p if isinstance(p, list) else [p], np.arange(6), 0.05) == 0
            compared += int(same.sum())
            table = compare(a, b, samples=same).iloc[:-1]
            assert table["max_abs_dt_ms"].max() <= TOL_MS, (name, p, table)
            assert (table["spikes_only_a"] + table["spikes_only_b"]).sum() == 0, (name, p, table)
            assert np.abs(a.logits - b.logits)[same].max() <= TOL_MS * max(1.0, np.abs(a.logits).max())
            for reason in a.reasons:
                np.testing.assert_array_equal(a.reasons[reason][same], b.reasons[reason][same])
            assert np.abs(a.logits - simulate_analytic(net, x[:6]).logits).max() > 1e-6, p  # it perturbed
        assert plain.compilations == late.compilations == 1
        assert compared >= 21, compared  # of 42 samples: the others had an input within a crossing's step


def test_conductance_has_no_brian2_twin_and_says_why():
    net = one_layer(np.array([[0.5, -0.2]]), np.array([0.6]))
    with pytest.raises(InputError, match="conductance has no Brian2 twin.*analytic"):
        Simulator(net, codegen_target="numpy").run(np.array([[0.3, 0.4]]), perturbation=Perturbation("conductance", 0.3))
    with pytest.raises(InputError, match="combines with neither leak"):
        simulate_analytic(net, np.array([[0.3, 0.4]]), perturbation=[Perturbation("synaptic_tau", 1.0),
                                                                      Perturbation("leak", 5.0)])


@pytest.mark.parametrize("bad,match", [
    (dict(kind="synaptic_tau", level=0.0), "time constant"),
    (dict(kind="conductance", level=1.0), r"\[0, 1\)"),
    (dict(kind="release_failure", level=1.2), "probability"),
    (dict(kind="conductance", level=0.2, options={"inhibitory_reversal": 0}), "must be > 0"),
    (dict(kind="delay_mismatch", level=0.1, options={"latency": 0.2}), "no options"),
])
def test_bad_biophysical_levels_are_clear_errors(bad, match):
    with pytest.raises(InputError, match=match):
        Perturbation(**bad)


def test_compensation_gives_back_the_mean_shortfall():
    """A leak and decaying currents change every potential: thresholds moved by each neuron's mean shortfall at its
    nominal crossing (over calibration data) bring the first layer's spikes back towards their nominal times; not
    exactly (the shortfall depends on the spread of the inputs, not only on the neuron's value:
    ttfs_brian.compensation)."""
    from ttfs_brian.compensation import compensate
    from test_perturb import conv_net

    rng = np.random.default_rng(9)
    x = rng.random((60, 1, 6, 6)).astype(np.float32)
    for variant in ("exact", "sparse"):
        net = ttfs_brian.convert(conv_net(), x[:40], variant=variant, dt=0.05)
        plain = simulate_analytic(net, x[40:])
        for p in (Perturbation("leak", 5.0), Perturbation("synaptic_tau", 3.0)):
            fixed = compensate(net, x[:40], p)
            assert fixed.meta["compensated"] == p.describe() and net.meta.get("compensated") is None
            hidden = [name for name, layer in net.layers.items() if layer.kind == "neuron"]
            assert any(not np.allclose(fixed.layers[h].arrays["threshold"], net.layers[h].arrays["threshold"])
                       for h in hidden)
            before = simulate_analytic(net, x[40:], perturbation=p)
            after = simulate_analytic(fixed, x[40:], perturbation=p)
            error = {name: np.nanmean(np.abs(r.spike_times[hidden[0]] - plain.spike_times[hidden[0]]))
                     for name, r in (("before", before), ("after", after))}
            assert error["after"] < 0.9 * error["before"], (variant, p, error)
    with pytest.raises(InputError, match="compensation exists for"):
        compensate(net, x[:40], Perturbation("drop", 0.1))
