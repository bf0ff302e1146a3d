"""Bad input gets a clear error (or a counted, logged clip) and loses nothing."""
import logging

import numpy as np
import pytest
import torch
import torch.nn as nn

import ttfs_brian
from ttfs_brian.errors import ConversionError, UnsupportedModuleError


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


X = np.random.default_rng(0).random((50, 4)).astype(np.float32)


def test_unsupported_module_names_module_and_type():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    with pytest.raises(UnsupportedModuleError, match=r"'1' of type Tanh.*Supported: Linear"):
        ttfs_brian.convert(model, X)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)) + x)


def test_addition_without_relu_composes_into_the_next_layer():
    """``out(relu(fc(x)) + x)``: the sum has no spiking population; the output gets two projections."""
    model = Residual().eval()
    net = ttfs_brian.convert(model, X)
    assert len(net.output_layer.projections) == 2
    assert ttfs_brian.verify(net, model, X).failures() == []


class Functional(nn.Module):
    """A non-Sequential forward with functional calls, view and dropout."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        x = torch.nn.functional.dropout(x, 0.5, self.training)
        return self.fc(x.view(x.size(0), -1))


def test_functional_forward_is_captured():
    x = np.random.default_rng(1).random((20, 1, 4, 4)).astype(np.float32)
    model = Functional().eval()
    net = ttfs_brian.convert(model, x)
    res = ttfs_brian.simulate(net, x)
    assert {"relu", "max_pool2d"} <= set(res.spike_times)
    assert ttfs_brian.verify(net, model, x, res).logit_max_rel_err < 1e-12


@pytest.mark.parametrize("where", ["weights", "calibration"])
def test_nan_is_rejected(where):
    model, x = _mlp(), X.copy()
    if where == "weights":
        with torch.no_grad():
            model[0].weight[0, 0] = float("nan")
        match = "parameter '0.weight' contains NaN"
    else:
        x[3, 1] = np.inf
        match = "calibration data contains 1 NaN or Inf"
    with pytest.raises(ValueError, match=match):
        ttfs_brian.convert(model, x)


def test_nan_inputs_and_wrong_shapes_at_simulation():
    net = ttfs_brian.convert(_mlp(), X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="input data contains 1 NaN"):
        ttfs_brian.simulate(net, bad)
    with pytest.raises(ValueError, match=r"expects \(N, 4\)"):
        ttfs_brian.simulate(net, X[:, :3])
    with pytest.raises(ValueError, match="add a batch dimension"):
        ttfs_brian.simulate(net, X[0])


def test_calibration_shape_mismatch():
    with pytest.raises(ConversionError, match="calibration data"):
        ttfs_brian.convert(_mlp(), np.random.rand(10, 5))


def test_out_of_range_inputs_are_counted_and_logged(caplog):
    model = _mlp()
    net = ttfs_brian.convert(model, X, input_range=(0.0, 1.0))
    x = X.copy()
    x[0, 0], x[1, 2], x[1, 3] = 1.5, -0.2, 7.0
    with caplog.at_level(logging.WARNING, logger="ttfs_brian"):
        res = ttfs_brian.simulate(net, x)
    assert res.report.set_index("layer").loc["input", "clipped"] == 3
    assert res.flagged[:2].all() and not res.flagged[2:].any()
    assert "3 input values in 2 of 50 samples lie outside the calibrated range" in caplog.text


def test_values_above_window_are_clipped_and_flagged():
    model = _mlp()
    for variant in ("exact", "sparse"):
        net = ttfs_brian.convert(model, X[:5], input_range=(0.0, 1.0), zeta=0.0, variant=variant)
        res = ttfs_brian.simulate(net, X)
        check = ttfs_brian.verify(net, model, X, res)
        clipped = res.report.set_index("layer").loc["1", "clipped"]
        assert clipped > 0 and res.flagged.any()
        # the clipped samples really differ (downstream of the clip, at least)...
        assert max(check.layers["max_rel_err"].max(), check.logit_max_rel_err) > 1e-6
        # ...and only those
        assert max(check.layers["max_rel_err_unflagged"].max(), check.logit_max_rel_err_unflagged) < 1e-12


def test_dead_layer_gets_minimal_window(caplog):
    model = _mlp()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    with caplog.at_level(logging.WARNING, logger="ttfs_brian"):
        net = ttfs_brian.convert(model, X)
    assert "never fired on the calibration set" in caplog.text
    t_min, t_max = net.windows["1"]
    assert 0 < t_max - t_min <= 1e-3 + 1e-12
    res = ttfs_brian.simulate(net, X)
    assert np.isfinite(res.logits).all()


def test_trailing_relu_is_rejected():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    with pytest.raises(ConversionError, match="final Linear/Conv"):
        ttfs_brian.convert(model, X)
