"""Perturbations (issue #7): the same realisation in both engines, spike by spike, and the laws they must obey."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import stats

import ttfs_brian
from ttfs_brian.analytic import simulate_analytic
from ttfs_brian.brian import Simulator
from ttfs_brian.comparison import reproduction_failures
from ttfs_brian.errors import InputError
from ttfs_brian.network import Layer, TTFSNetwork
from ttfs_brian.perturb import KINDS, TIME_CONSTANTS, Perturbation, normal, uniform
from ttfs_brian.projection import Projection
from helpers import ResidualNet, randomize_batchnorm

TOL_MS = 1e-9
DT = 0.05
"""Precise timing is exact at any step once windows are multiples of it; a coarse one keeps the tests fast."""
LEVELS = {  # two levels per kind (leak: tau_m in ms; bits: levels)
    "input_jitter": (0.02, 0.1), "spike_jitter": (0.02, 0.1), "alpha_mismatch": (0.01, 0.1),
    "threshold_mismatch": (0.01, 0.1), "weight_noise": (0.01, 0.1), "weight_bits": (8, 3), "time_bits": (8, 4),
    "drop": (0.05, 0.3), "leak": (20.0, 2.0),
}
ALL = [Perturbation(kind, level) for kind, (level, _) in LEVELS.items()]


def conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(27, 6), nn.ReLU(), nn.Linear(6, 3))
    randomize_batchnorm(model, np.random.default_rng(0))
    return model.eval()


def residual_net():
    torch.manual_seed(1)
    model = ResidualNet()
    randomize_batchnorm(model, np.random.default_rng(1))
    return model.eval()


@pytest.fixture(scope="module")
def nets():
    x6 = np.random.default_rng(2).random((40, 1, 6, 6)).astype(np.float32)
    x8 = np.random.default_rng(3).random((40, 1, 8, 8)).astype(np.float32)
    out = {}
    for variant in ("exact", "sparse"):
        out[("conv", variant)] = (ttfs_brian.convert(conv_net(), x6, variant=variant, dt=DT), x6[:4])
        out[("residual", variant)] = (ttfs_brian.convert(residual_net(), x8, variant=variant, dt=DT), x8[:3])
    return out


def assert_same(a, b, tol=TOL_MS):
    """Every spike, silence and prediction of the unflagged samples; the same flags everywhere.

    A sample is flagged when a neuron crosses its threshold before its window (clipped or early, variant
    ``exact``): its crossing may precede another input of the same step, which precise timing cannot order
    (documented), so only the flags of such samples must agree.
    """
    np.testing.assert_array_equal(a.flagged, b.flagged)
    for reason in a.reasons:
        np.testing.assert_array_equal(a.reasons[reason], b.reasons[reason], err_msg=reason)
    ok = ~a.flagged
    for key, ta in a.spike_times.items():
        ta, tb = ta[ok], b.spike_times[key][ok]
        np.testing.assert_array_equal(np.isnan(ta), np.isnan(tb), err_msg=key)
        fired = ~np.isnan(ta)
        assert np.abs(ta[fired] - tb[fired]).max(initial=0) <= tol, key
    assert np.abs(a.logits - b.logits)[ok].max(initial=0) <= tol * max(1.0, np.abs(a.logits).max())
    np.testing.assert_array_equal(a.predictions[ok], b.predictions[ok])
    if not a.flagged.any():
        assert a.report.equals(b.report), f"\n{a.report}\n{b.report}"
    else:
        assert (a.report[["clipped", "early_fired"]].to_numpy() > 0).any()


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"membrane_noise"}))
def test_level_zero_is_the_unperturbed_network(kind, nets):
    net, x = nets[("conv", "exact")]
    zero = Perturbation(kind, math.inf if kind in TIME_CONSTANTS else 0.0, seed=3)
    plain = simulate_analytic(net, x)
    assert not reproduction_failures(plain, simulate_analytic(net, x, perturbation=zero))
    assert_same(plain, Simulator(net, codegen_target="numpy").run(x, perturbation=zero), tol=TOL_MS)


@pytest.mark.parametrize("name", ["conv", "residual"])
@pytest.mark.parametrize("variant", ["exact", "sparse"])
def test_engines_agree_spike_by_spike_under_every_kind(name, variant, nets, tmp_path):
    """Analytic and Brian2 precise (cpp_standalone) on one binary compiled for every kind, two levels each."""
    net, x = nets[(name, variant)]
    sim = Simulator(net, device="cpp_standalone", dt=DT, build_dir=tmp_path, perturbations=ALL)
    for kind, levels in LEVELS.items():
        for level in levels:
            p = Perturbation(kind, level, seed=7)
            a = simulate_analytic(net, x, perturbation=p)
            assert_same(a, sim.run(x, perturbation=p))
            assert a.meta["perturbation"] == [p.describe()]
            if level == levels[0]:  # the smaller level perturbs without early firing: every sample compared
                assert not a.flagged.any(), (kind, level)
        changed = simulate_analytic(net, x, perturbation=Perturbation(kind, levels[1], seed=7))
        assert np.abs(changed.logits - simulate_analytic(net, x).logits).max() > 1e-6, kind  # it did something
    assert sim.compilations == 1


@pytest.mark.parametrize("variant", ["exact", "sparse"])
def test_runtime_device_agrees_under_every_kind(variant, nets):
    net, x = nets[("conv", variant)]
    sim = Simulator(net, dt=DT, codegen_target="numpy", perturbations=ALL)
    for kind, levels in LEVELS.items():
        p = Perturbation(kind, levels[1], seed=3)
        assert_same(simulate_analytic(net, x[:2], perturbation=p), sim.run(x[:2], perturbation=p))
    assert sim.compilations == 1


def test_cpp_standalone_compiles_once_for_kinds_levels_and_seeds(nets, tmp_path, variant="exact"):
    """3 kinds x 3 levels x 2 seeds (and a combination) on one binary, every spike as the analytic engine."""
    net, x = nets[("residual", variant)]
    kinds = {"spike_jitter": (0.01, 0.05, 0.1), "weight_noise": (0.01, 0.05, 0.1), "drop": (0.05, 0.1, 0.3)}
    hint = [Perturbation(kind, levels[0]) for kind, levels in kinds.items()]
    sim = Simulator(net, device="cpp_standalone", dt=DT, build_dir=tmp_path, perturbations=hint)
    for kind, levels in kinds.items():
        for level in levels:
            for seed in (0, 1):
                p = Perturbation(kind, level, seed=seed)
                assert_same(simulate_analytic(net, x, perturbation=p), sim.run(x, perturbation=p))
    combined = [Perturbation("spike_jitter", 0.05, seed=4), Perturbation("weight_noise", 0.05, seed=5),
                Perturbation("drop", 0.1, seed=6)]
    assert_same(simulate_analytic(net, x, perturbation=combined), sim.run(x, perturbation=combined))
    assert sim.compilations == 1


def test_jitter_with_latency_keeps_spikes_causal_and_engines_agree(nets, tmp_path):
    net, x = nets[("conv", "exact")]
    p = Perturbation("spike_jitter", 0.1, seed=2, options={"latency_ms": 0.2})
    a = simulate_analytic(net, x, perturbation=p)
    shifted = simulate_analytic(net, x, perturbation=Perturbation("spike_jitter", 0.0, options={"latency_ms": 0.2}))
    assert shifted.meta["perturbation"][0]["latency_ms"] == 0.2
    np.testing.assert_allclose(shifted.logits, simulate_analytic(net, x).logits, rtol=0, atol=1e-9)  # D alone: exact
    for dt, device in ((0.05, "runtime"), (0.1, "cpp_standalone")):
        kw = {"codegen_target": "numpy"} if device == "runtime" else {"build_dir": tmp_path}
        net_dt = ttfs_brian.convert(conv_net(), np.random.default_rng(2).random((40, 1, 6, 6)).astype(np.float32),
                                    variant="exact", dt=dt)
        assert_same(simulate_analytic(net_dt, x, perturbation=p), Simulator(net_dt, device=device, dt=dt, **kw).run(
            x, perturbation=p))
    assert not np.allclose(a.logits, shifted.logits)


@pytest.fixture(params=[1, 2], ids=["1_thread", "2_threads"])
def torch_threads(request):
    """Float-sensitive tests run with one and two torch threads: a matrix product may split its sums by thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_draws_do_not_depend_on_batches_or_sharding(nets, torch_threads):
    """The reproducibility contract (``comparison.reproduction_failures``): a batch and its shards with their
    global indices draw the same noise, hence the same spikes, losses, flags and predictions; values agree to
    rounding (a matrix product of 10 rows does not round as one of 3 and one of 7)."""
    net, _ = nets[("conv", "sparse")]
    x = np.random.default_rng(9).random((10, 1, 6, 6)).astype(np.float32)
    p = [Perturbation("input_jitter", 0.05, seed=1), Perturbation("drop", 0.2, seed=2)]
    whole = simulate_analytic(net, x, perturbation=p, indices=np.arange(100, 110))
    first = simulate_analytic(net, x[:3], perturbation=p, indices=np.arange(100, 103))
    rest = simulate_analytic(net, x[3:], perturbation=p, indices=np.arange(103, 110))
    assert not reproduction_failures(whole, joined(first, rest))
    assert whole.report["dropped"].sum() > 0
    brian = Simulator(net, codegen_target="numpy", batch_size=4).run(x, perturbation=p, indices=np.arange(100, 110))
    assert_same(whole, brian)
    other_seed = simulate_analytic(net, x, perturbation=[Perturbation("input_jitter", 0.05, seed=9)])
    assert not np.allclose(other_seed.logits, whole.logits)
    # the draws themselves: a pure function of (seed, keys), uniform and normal as they should be
    u = uniform(0, "k", np.arange(200_000))
    assert 0 < u.min() and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(normal(5, "k", np.arange(200_000)), "norm").pvalue > 1e-3
    np.testing.assert_array_equal(normal(5, "k", np.arange(10)), normal(5, "k", np.arange(20))[:10])


def joined(*parts):
    """Results of consecutive shards as one result (spike times, logits, flags; the report's counts summed)."""
    from ttfs_brian.result import SimulationResult

    report = parts[0].report.copy()
    for column in ("spikes", "clipped", "early_fired", "dropped"):
        report[column] = sum(part.report[column] for part in parts)
    return SimulationResult(np.concatenate([part.logits for part in parts]),
                            {key: np.concatenate([part.spike_times[key] for part in parts]) for key in parts[0].spike_times},
                            report, {reason: np.concatenate([part.reasons[reason] for part in parts])
                                     for reason in parts[0].reasons})


CHUNKED = [None, Perturbation("spike_jitter", 0.05, seed=3), Perturbation("drop", 0.2, seed=4)]


@pytest.mark.parametrize("perturbation", CHUNKED, ids=["closed_form", "jitter", "drop"])
def test_the_analytic_engine_solves_in_sample_chunks_with_the_same_result(nets, monkeypatch, perturbation,
                                                                          torch_threads):
    """The engine works through a batch in chunks of ``SAMPLE_CHUNK`` samples (cache-sized); the pieces must
    join into the same spikes, flags, drop counts and report as one pass over the whole batch (values to
    rounding: the contract of ``comparison.reproduction_failures``)."""
    from ttfs_brian import analytic

    net, _ = nets[("conv", "exact")]
    x = np.random.default_rng(10).random((11, 1, 6, 6)).astype(np.float32) * 1.5  # some inputs out of range
    whole = simulate_analytic(net, x, perturbation=perturbation)
    monkeypatch.setattr(analytic, "SAMPLE_CHUNK", 4)
    chunked = simulate_analytic(net, x, perturbation=perturbation)
    assert not reproduction_failures(whole, chunked)
    assert whole.reasons["input_out_of_range"].any()
    if perturbation is not None and perturbation.kind == "drop":
        assert whole.report["dropped"].sum() > 0


@pytest.mark.parametrize("perturbation", CHUNKED[1:], ids=["jitter", "drop"])
def test_a_draw_that_depends_on_the_chunk_breaks_the_contract(nets, monkeypatch, perturbation):
    """The contract's tolerance covers rounding, not noise: were the draws keyed by the position in the chunk
    instead of the global sample index, the chunked run would differ and the check must say so."""
    from ttfs_brian import analytic, events

    net, _ = nets[("conv", "exact")]
    x = np.random.default_rng(10).random((11, 1, 6, 6)).astype(np.float32)
    whole = simulate_analytic(net, x, perturbation=perturbation)
    monkeypatch.setattr(analytic, "SAMPLE_CHUNK", 4)
    keyed_by_position = events.departure
    monkeypatch.setattr(events, "departure", lambda net, layer, ps, indices: keyed_by_position(
        net, layer, ps, np.asarray(indices) - np.asarray(indices)[0]))
    failures = reproduction_failures(whole, simulate_analytic(net, x, perturbation=perturbation))
    assert failures, "a draw keyed by the chunk position went unnoticed"
    expected = "spike in one result only" if perturbation.kind == "drop" else "spike times differ"
    assert any(expected in failure for failure in failures), failures


def test_input_jitter_spreads_first_layer_spikes_by_sigma_times_weight_norm():
    """Without clipping or early firing, t_i = (theta + t_on + sum_j J_j a_j + beta t_min) / s, so an input
    jitter of sigma spreads t_i by sigma * ||J_i|| / s_i = sigma * ||W_i||_2 (W after rescaling)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    calibration = np.random.default_rng(4).uniform(0.2, 1.0, (200, 8)).astype(np.float32)
    net = ttfs_brian.convert(model, calibration, variant="exact")
    sigma, copies = 0.005, 4000
    x = np.repeat(calibration[:1], copies, axis=0)
    res = simulate_analytic(net, x, perturbation=Perturbation("input_jitter", sigma, seed=11))
    assert not res.flagged.any()
    hidden = net.layers["1"]
    j = hidden.projections[0].weight
    s = 1 + j.sum(axis=1)
    expected = sigma * np.linalg.norm(j / s[:, None], axis=1)
    measured = res.spike_times["1"].std(axis=0, ddof=1)
    standard_error = expected / np.sqrt(2 * (copies - 1))
    active = simulate_analytic(net, x[:1]).spike_times["1"][0] < hidden.t_max - 0.05  # not forced at t_max
    assert active.sum() >= 3
    assert np.all(np.abs(measured - expected)[active] < 5 * standard_error[active]), (measured, expected)
    assert np.all(measured[~active] < 1e-9)  # a neuron forced at t_max does not move


def drift_neuron(theta: float, t_max: float) -> TTFSNetwork:
    """One input (no effect) and one ``exact`` neuron with drive alpha = 1 from t = 0: ``dV = dt / tau_c``."""
    layers = {
        "input": Layer("input", "input", (1,), 0.0, 1.0, arrays={"low": np.zeros(1), "high": np.ones(1)}),
        "h": Layer("h", "neuron", (1,), 1.0, t_max, (Projection("input", "dense", np.zeros((1, 1))),),
                   arrays={"bias": np.zeros(1), "threshold": np.array([theta]), "scale": np.ones(1)}),
        "out": Layer("out", "output", (1,), t_max, t_max, (Projection("h", "dense", np.ones((1, 1))),),
                     arrays={"bias": np.zeros(1), "drive": np.zeros(1)}),
    }
    return TTFSNetwork("exact", 1.0, layers, "out", dt=0.0005)


def test_membrane_noise_first_passage_is_inverse_gaussian():
    """dV = r dt + sigma sqrt(2 / tau_c) dW from V = 0: the first passage of theta has the inverse Gaussian law
    with mean theta / r and variance theta (2 sigma^2 / tau_c) / r^3 (Kolmogorov-Smirnov on 2,000 draws)."""
    import brian2 as b2

    theta, sigma, draws, dt = 1.0, 0.1, 2000, 0.0005
    net = drift_neuron(theta, t_max=4.0)
    b2.seed(17)
    res = Simulator(net, timing="grid", dt=dt, codegen_target="numpy").run(
        np.full((draws, 1), 0.5), perturbation=Perturbation("membrane_noise", sigma))
    passage = res.spike_times["h"][:, 0] + dt  # grid timing stamps the step in which v crossed
    assert np.isfinite(passage).all() and passage.max() < 4.0 - 1e-9  # none forced at t_max
    mean, shape = theta / 1.0, theta ** 2 / (2 * sigma ** 2)
    law = stats.invgauss(mean / shape, scale=shape)
    assert stats.kstest(passage, law.cdf).pvalue > 0.01
    assert abs(passage.var() - theta * 2 * sigma ** 2) < 0.1 * theta * 2 * sigma ** 2
    with pytest.raises(InputError, match="no analytic twin"):
        simulate_analytic(net, np.full((1, 1), 0.5), perturbation=Perturbation("membrane_noise", sigma))


def test_leak_matches_closed_form_and_vanishes_as_tau_grows(nets):
    net, x = nets[("conv", "exact")]
    for tau in (1.0, 5.0):
        p = Perturbation("leak", tau)
        assert_same(simulate_analytic(net, x, perturbation=p), Simulator(net, codegen_target="numpy").run(
            x, perturbation=p))
    far = simulate_analytic(net, x, perturbation=Perturbation("leak", 1e9))
    plain = simulate_analytic(net, x)
    np.testing.assert_allclose(far.logits, plain.logits, rtol=0, atol=1e-6)
    near = simulate_analytic(net, x, perturbation=Perturbation("leak", 1e3))
    assert np.abs(near.logits - plain.logits).max() > np.abs(far.logits - plain.logits).max()


@pytest.mark.parametrize("bad,match", [
    (dict(kind="noise", level=0.1), "unknown perturbation kind"),
    (dict(kind="drop", level=1.5), "probability"),
    (dict(kind="input_jitter", level=-0.1), ">= 0"),
    (dict(kind="input_jitter", level=float("nan")), ">= 0"),
    (dict(kind="leak", level=0.0), "must be > 0"),
    (dict(kind="drop", level=0.1, options={"latency_ms": 1}), "no options"),
])
def test_bad_perturbations_are_clear_errors(bad, match):
    with pytest.raises(InputError, match=match):
        Perturbation(**bad)
