"""Property-based checks of the whole conversion on random architectures (chains and DAGs with residual
additions, identity and 1x1-conv shortcuts, concatenations), weights and input ranges."""
import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ttfs_brian
from helpers import random_dag, random_network, randomize_batchnorm

TOL = 1e-9


def _check(model_shape, seed, low, span, variant, **options):
    model, shape, valid = model_shape
    assume(valid)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and not isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.reset_parameters()
    randomize_batchnorm(model, rng)
    x = (low + span * rng.random((40, *shape))).astype(np.float32)
    try:
        model(torch.as_tensor(x))
    except RuntimeError:
        assume(False)
    net = ttfs_brian.convert(model, x, variant=variant, **options)
    res = ttfs_brian.simulate(net, x)
    check = ttfs_brian.verify(net, model, x, res)
    if variant == "sparse":
        assert not res.flagged.any(), res.report
    ok = ~res.flagged
    assert check.layers["max_rel_err_unflagged"].to_numpy().max(initial=0) <= TOL, check
    assert check.logit_max_rel_err_unflagged <= TOL, check
    # ties between the two largest reference logits could flip argmax on rounding alone
    assert check.agreement_unflagged == 1.0 or _has_near_tie(model, x[ok])
    # every ReLU and MaxPool2d module of the model has spike times (a module called twice: under name_1 too)
    names = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d))}
    assert names <= set(res.spike_times), names - set(res.spike_times)
    return res


def _has_near_tie(model, x):
    with torch.no_grad():
        z = model.double()(torch.as_tensor(x, dtype=torch.float64)).numpy()
    top = np.sort(z, axis=1)[:, -2:]
    return bool(np.any(top[:, 1] - top[:, 0] < 1e-9 * np.abs(z).max()))


settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                        HealthCheck.filter_too_much])
settings.load_profile("ci")


MODELS = st.one_of(random_network(), random_dag())


@given(MODELS, st.integers(0, 2**31), st.floats(-2, 1), st.floats(0.5, 3))
def test_sparse_matches_relu_network(model_shape, seed, low, span):
    _check(model_shape, seed, low, span, "sparse")


@given(MODELS, st.integers(0, 2**31), st.floats(-2, 1), st.floats(0.5, 3))
def test_exact_matches_relu_network_or_flags(model_shape, seed, low, span):
    _check(model_shape, seed, low, span, "exact")


@given(random_dag(), st.integers(0, 2**31))
def test_dags_in_both_variants_with_delays(model_shape, seed):
    """Residual and concatenating layers get synaptic delays (SPEC section 7), plus a uniform axonal delay."""
    for variant in ("exact", "sparse"):
        model, shape, valid = model_shape
        assume(valid)
        res = _check(model_shape, seed, 0.0, 1.0, variant, delay_ms=0.25)
        assert res is not None


@given(MODELS, st.integers(0, 2**31), st.floats(0.0, 0.4))
def test_explicit_input_range_and_dt_alignment(model_shape, seed, margin):
    model, shape, valid = model_shape
    assume(valid)
    rng = np.random.default_rng(seed)
    randomize_batchnorm(model, rng)
    x = rng.random((30, *shape)).astype(np.float32)
    try:
        model(torch.as_tensor(x))
    except RuntimeError:
        assume(False)
    dt = 0.01
    net = ttfs_brian.convert(model, x, variant="sparse", input_range=(-margin, 1 + margin), dt=dt)
    for t_min, t_max in net.windows.values():
        for t in (t_min, t_max):
            assert abs(t / dt - round(t / dt)) < 1e-9
    res = ttfs_brian.simulate(net, x)
    check = ttfs_brian.verify(net, model, x, res)
    assert not res.flagged.any()
    assert check.layers["max_rel_err"].to_numpy().max(initial=0) <= TOL and check.logit_max_rel_err <= TOL
