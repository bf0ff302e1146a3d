"""Each graph pass alone: it must keep the network function (rescaling: up to known factors)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ttfs_brian import passes
from ttfs_brian.capture import capture
from ttfs_brian.errors import ConversionError
from ttfs_brian.graph import forward
from ttfs_brian.lowering import forward as population_forward
from ttfs_brian.lowering import lower
from ttfs_brian.projection import weight_sum
from helpers import ResidualNet, randomize_batchnorm


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


def test_fold_affines_folds_into_layers_and_keeps_output(graph_and_data):
    graph, x, _ = graph_and_data
    folded = passes.fold_affines(graph)
    assert sum(op.kind == "affine" for op in folded) < sum(op.kind == "affine" for op in graph)
    assert any(op.kind == "affine" for op in graph)  # the input was left untouched (pure pass)
    assert torch.allclose(_out(folded, x), _out(graph, x), rtol=0, atol=1e-12)
    # every affine left moved past the pools and flatten; only those before a Linear/Conv's columns are gone
    assert not any(op.kind == "affine" for op in folded)
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


@pytest.mark.parametrize("size,becomes_avgpool", [((1, 1), True), ((2, 3), True), ((5, 5), False), ((12, 12), False)])
def test_adaptive_to_avgpool(size, becomes_avgpool):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(size), nn.Flatten(),
                          nn.Linear(2 * size[0] * size[1], 3)).eval()
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    graph = capture(model, x[:2])
    rewritten = passes.adaptive_to_avgpool(graph)
    assert any(op.kind == "avgpool" for op in rewritten) == becomes_avgpool
    assert torch.allclose(_out(rewritten, x), _out(graph, x), atol=1e-12)


def _lowered(model, x):
    graph = passes.avgpool_to_conv(passes.adaptive_to_avgpool(passes.fold_affines(capture(model, x[:2]))))
    return lower(graph).layers


@pytest.mark.parametrize("make", ["chain", "residual", "replicate"])
def test_lower_keeps_the_logits(make):
    torch.manual_seed(0)
    if make == "chain":
        model, shape = _model(), (2, 8, 8)
    elif make == "residual":
        model, shape = ResidualNet(), (1, 8, 8)
        randomize_batchnorm(model, np.random.default_rng(0))
    else:  # torchvision VGG's classifier on small inputs: 1x1 maps replicated to 7x7, absorbed by the Linear
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(4), nn.AdaptiveAvgPool2d((7, 7)),
                              nn.Flatten(), nn.Linear(3 * 49, 4)).eval()
        shape = (1, 6, 6)
    x = torch.rand(10, *shape, dtype=torch.float64)
    layers = _lowered(model, x)
    with torch.no_grad():
        expected = model.double()(x)
    got = population_forward(layers, x)[next(reversed(layers))]
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    if make == "residual":
        assert any(len(layer.projections) == 2 for layer in layers.values())  # a layer with a shortcut
        assert any(p.kind == "identity" for layer in layers.values() for p in layer.projections)


def test_relu_of_batchnorm_after_relu_is_an_identity_projection():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    randomize_batchnorm(model, np.random.default_rng(1))
    x = torch.rand(8, 3, dtype=torch.float64)
    layers = _lowered(model, x)
    second = layers["3"]
    assert [p.kind for p in second.projections] == ["identity"]
    assert torch.allclose(population_forward(layers, x)[next(reversed(layers))], model.double()(x), atol=1e-12)


def test_rescale_weights_bounds_sums_over_all_projections_and_scales_activations():
    torch.manual_seed(2)
    model = ResidualNet()
    randomize_batchnorm(model, np.random.default_rng(2))
    for module in model.modules():  # large weights, so that rescaling must act
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.data *= 5
    x = torch.rand(12, 1, 8, 8, dtype=torch.float64)
    layers = _lowered(model, x)
    rescaled, scales = passes.rescale_weights(layers, s_max=0.99, s_min=-10)
    before, after = population_forward(layers, x), population_forward(rescaled, x)
    output = next(reversed(layers))
    assert torch.allclose(after[output], before[output], atol=1e-10)
    for layer in rescaled.values():
        if layer.kind == "neuron":
            sums = sum(weight_sum(p, layer.shape) for p in layer.projections)
            assert np.all(sums <= 0.99 + 1e-12) and np.all(sums >= -10 - 1e-12)
        if layer.kind in ("neuron", "maxpool"):
            np.testing.assert_allclose(after[layer.name].numpy(), before[layer.name].numpy() * scales[layer.name],
                                       atol=1e-10)
    assert any(np.any(scales[name] != 1) for name in scales)


def test_linear_after_linear_without_relu_is_rejected():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)).eval()
    with pytest.raises(ConversionError, match="no ReLU in between"):
        _lowered(model, torch.rand(4, 3, dtype=torch.float64))


def test_max_pool_of_negative_values_needs_a_relu_after_it():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2)).eval()
    with pytest.raises(ConversionError, match="put a ReLU before the pool"):
        _lowered(model, torch.rand(4, 1, 6, 6, dtype=torch.float64))


class PreActivation(nn.Module):
    """A pre-activation block: the residual stream is a sum with no ReLU of its own."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        stream = self.conv0(x)
        stream = stream + self.conv1(F.relu(self.bn(stream)))
        return self.fc(torch.flatten(F.relu(stream), 1))


def test_pre_activation_additions_compose_into_the_next_layer():
    model = PreActivation()
    randomize_batchnorm(model, np.random.default_rng(4))
    x = torch.rand(6, 1, 6, 6, dtype=torch.float64)
    layers = _lowered(model, x)
    assert torch.allclose(population_forward(layers, x)[next(reversed(layers))], model.double()(x), atol=1e-12)
    assert any(len(layer.projections) == 2 for layer in layers.values())
