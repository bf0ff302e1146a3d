"""Grid timing converges with dt; compare() reports what differs between two results."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import ttfs_brian
from ttfs_brian.brian import Simulator


@pytest.fixture(scope="module")
def mlp_case():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = np.random.default_rng(3).random((20, 6)).astype(np.float32)
    return model, x


@pytest.mark.parametrize("variant", ["exact", "sparse"])
def test_grid_error_shrinks_with_dt_and_predictions_agree(mlp_case, variant):
    model, x = mlp_case
    errors = {}
    for dt in (0.01, 0.003, 0.001):
        net = ttfs_brian.convert(model, x, variant=variant, dt=dt)
        reference = ttfs_brian.simulate(net, x)
        result = Simulator(net, timing="grid", dt=dt, codegen_target="numpy").run(x)
        table = ttfs_brian.compare(reference, result)
        errors[dt] = table["max_abs_dt_ms"].iloc[:-1].max()
        # documented bound: each coded layer adds at most one step of latency and one of rounding
        assert errors[dt] <= 2 * len(net.layers) * dt
        if dt == 0.001:
            assert table.attrs["agreement"] == 1.0
            assert (result.predictions == model(torch.as_tensor(x)).argmax(1).numpy()).all()
    assert errors[0.01] > errors[0.003] > errors[0.001] > 0


def test_compare_counts_missing_spikes_and_logit_errors(mlp_case):
    model, x = mlp_case
    net = ttfs_brian.convert(model, x, variant="sparse")
    a = ttfs_brian.simulate(net, x)
    b = ttfs_brian.simulate(net, x)
    same = ttfs_brian.compare(a, b)
    assert (same["max_abs_dt_ms"].iloc[:-1] == 0).all() and same.attrs["agreement"] == 1.0
    hidden = a.report["layer"].iloc[1]
    fired = np.argwhere(~np.isnan(b.spike_times[hidden]))
    b.spike_times[hidden] = b.spike_times[hidden].copy()
    b.spike_times[hidden][tuple(fired[0])] = np.nan  # one spike lost
    b.spike_times[hidden][tuple(fired[1])] += 0.25  # one spike late
    b.logits = b.logits.copy()
    b.logits[0] = -b.logits[0]  # flips the first prediction
    table = ttfs_brian.compare(a, b).set_index("layer")
    assert table.loc[hidden, "spikes_only_a"] == 1 and table.loc[hidden, "spikes_only_b"] == 0
    assert table.loc[hidden, "max_abs_dt_ms"] == pytest.approx(0.25)
    assert table.loc["logits", "logit_max_abs_err"] > 0
    assert table.loc["logits", "agreement"] == pytest.approx(19 / 20)
    with pytest.raises(ValueError, match="different batches"):
        ttfs_brian.compare(a, ttfs_brian.simulate(net, x[:5]))


def test_pool_feeding_a_strongly_inhibited_conv_stays_exact():
    """Regression: a pool used to pass its input on one step late, so neurons of the next layer could
    cross their threshold before the pooled (inhibitory) spikes arrived: 8.9 ms errors on VGG-small."""
    from ttfs_brian import data, zoo

    model, _ = zoo.load_pretrained("vgg_small", "mnist5k")
    mnist = data.mnist5k()
    net = ttfs_brian.convert(model, mnist.x_train[:2000], variant="exact", dt=0.2)
    x = mnist.x_test[:3]
    table = ttfs_brian.compare(ttfs_brian.simulate(net, x),
                               Simulator(net, dt=0.2, codegen_target="numpy").run(x))
    assert table["max_abs_dt_ms"].iloc[:-1].max() < 1e-9
    assert table["logit_max_rel_err"].iloc[-1] < 1e-9
