"""Each graph pass alone: it must keep the network function (rescaling: up to known factors)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from ttfs_brian import passes
from ttfs_brian.capture import capture
from ttfs_brian.errors import ConversionError
from ttfs_brian.graph import forward
from helpers import randomize_batchnorm


def _model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.BatchNorm2d(4), nn.AvgPool2d(2, padding=1),
        nn.Flatten(), nn.Linear(36, 7), nn.ReLU(), nn.BatchNorm1d(7), nn.Linear(7, 3),
    )
    randomize_batchnorm(model, np.random.default_rng(seed))
    return model


@pytest.fixture
def graph_and_data():
    model = _model()
    x = torch.rand(16, 2, 8, 8, dtype=torch.float64)
    return capture(model, x[:2]), x, model


def _out(graph, x):
    return forward(graph, x)[graph[-1].name]


def test_capture_reproduces_model(graph_and_data):
    graph, x, model = graph_and_data
    with torch.no_grad():
        expected = model.double()(x)
    assert torch.allclose(_out(graph, x), expected, rtol=0, atol=1e-12)


def test_fold_affines_removes_every_affine_and_keeps_output(graph_and_data):
    graph, x, _ = graph_and_data
    folded = passes.fold_affines(graph)
    assert not any(op.kind == "affine" for op in folded)
    assert any(op.kind == "affine" for op in graph)  # the input was left untouched (pure pass)
    assert torch.allclose(_out(folded, x), _out(graph, x), rtol=0, atol=1e-12)
    # the BN with negative scales between ReLU and MaxPool turned some channels into min pools
    pool = next(op for op in folded if op.kind == "maxpool")
    assert np.any(pool.params["sign"] < 0)


def test_position_dependent_bias_at_padded_borders():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(1), conv, nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    randomize_batchnorm(model, np.random.default_rng(3), negative=False)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    folded = passes.fold_affines(capture(model, x[:2]))
    bias = next(op for op in folded if op.kind == "conv").params["bias"][0]
    assert bias[0, 0] != pytest.approx(bias[1, 1])  # corner sees fewer shifted inputs than the centre
    assert torch.allclose(_out(folded, x), _out(capture(model, x[:2]), x), atol=1e-12)


def test_insert_input_affine_maps_unit_interval(graph_and_data):
    graph, x, _ = graph_and_data
    low, high = -0.7, 2.3
    with_map = passes.insert_input_affine(graph, low, high)
    u = torch.rand(5, 2, 8, 8, dtype=torch.float64)
    assert torch.allclose(_out(with_map, u), _out(graph, low + (high - low) * u), atol=1e-12)
    folded = passes.fold_affines(with_map)
    assert torch.allclose(_out(folded, u), _out(with_map, u), atol=1e-12)


def test_avgpool_to_conv(graph_and_data):
    graph, x, _ = graph_and_data
    folded = passes.fold_affines(graph)
    converted = passes.avgpool_to_conv(folded)
    assert not any(op.kind == "avgpool" for op in converted)
    assert any(op.kind == "avgpool" for op in folded)
    assert torch.allclose(_out(converted, x), _out(folded, x), atol=1e-12)


def test_rescale_weights_bounds_sums_and_scales_activations(graph_and_data):
    graph, x, _ = graph_and_data
    base = passes.avgpool_to_conv(passes.fold_affines(graph))
    # make some weight sums large so that rescaling must act
    base = [op.with_params(weight=op.params["weight"] * 5) if op.kind in ("linear", "conv") else op for op in base]
    rescaled, scales = passes.rescale_weights(base, s_max=0.99, s_min=-10)
    before, after = forward(base, x), forward(rescaled, x)
    assert torch.allclose(after[base[-1].name], before[base[-1].name], atol=1e-10)
    hidden = [op for op in rescaled if op.kind in ("linear", "conv")][:-1]
    for op in hidden:
        sums = op.params["weight"].reshape(op.params["weight"].shape[0], -1).sum(axis=1)
        assert np.all(sums <= 0.99 + 1e-12) and np.all(sums >= -10 - 1e-12)
        relu = next(o for o in rescaled if o.inputs == (op.name,))
        np.testing.assert_allclose(after[relu.name].numpy(), before[relu.name].numpy() * scales[op.name], atol=1e-10)
    assert any(np.any(scales[op.name] != 1) for op in hidden)


def test_relu_after_batchnorm_after_relu_is_rejected():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with pytest.raises(ConversionError, match="Move the BatchNorm before the ReLU"):
        passes.fold_affines(capture(model, torch.rand(2, 3)))
