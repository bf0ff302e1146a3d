"""Networks as graphs (issue #6): residual additions, concatenations, delays, in both engines and on disk."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ttfs_brian
from ttfs_brian.analytic import simulate_analytic
from ttfs_brian.brian import Simulator
from ttfs_brian.errors import ConversionError, InputError, UnsupportedModuleError
from helpers import BasicBlock, ResidualNet, assert_spikes_match, randomize_batchnorm

TOL_MS = 1e-9


class ConcatNet(nn.Module):
    """Two branches concatenated, a conv over the concatenation, a BN-ReLU of it, and a Linear over both."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(5)
        self.c = nn.Conv2d(5, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3 + 5 * 8 * 8, 3)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        z = F.relu(self.c(y))
        w = F.relu(self.bn(y))
        return self.fc(torch.cat([torch.flatten(z, 1), w.flatten(1)], 1))


def _model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ResidualNet() if kind == "residual" else ConcatNet()
    randomize_batchnorm(model, np.random.default_rng(seed))
    return model.eval()


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(5)
    return rng.random((64, 1, 8, 8)).astype(np.float32), rng.random((5, 1, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("kind", ["residual", "concat"])
@pytest.mark.parametrize("variant", ["exact", "sparse"])
def test_graph_nets_are_exact_and_carry_delays(kind, variant, inputs):
    calibration, x = inputs
    model = _model(kind)
    net = ttfs_brian.convert(model, calibration, variant=variant, dt=0.05)
    delayed = [p for layer in net.layers.values() for p in layer.projections if p.delay > 0]
    assert delayed  # a branch that ends earlier waits for the latest one (SPEC section 7)
    for layer in net.layers.values():
        for proj in layer.projections:  # every spike arrives as if from the latest source
            if layer.kind != "maxpool":
                assert net.layers[proj.source].t_max + proj.delay == pytest.approx(layer.t_min, abs=1e-12)
    check = ttfs_brian.verify(net, model, calibration)
    assert check.failures() == [], check
    analytic = simulate_analytic(net, x)
    for dt in (0.05, 0.01):  # precise timing at two steps
        assert_spikes_match(analytic, Simulator(net, dt=dt, codegen_target="numpy").run(x))


@pytest.mark.parametrize("kind", ["residual", "concat"])
@pytest.mark.parametrize("variant", ["exact", "sparse"])
def test_graph_nets_in_cpp_standalone(kind, variant, inputs, tmp_path):
    calibration, x = inputs
    net = ttfs_brian.convert(_model(kind, seed=1), calibration, variant=variant, dt=0.05)
    sim = Simulator(net, device="cpp_standalone", dt=0.05, build_dir=tmp_path, batch_size=2)
    assert_spikes_match(simulate_analytic(net, x), sim.run(x))
    assert sim.compilations == 1


@pytest.mark.parametrize("variant", ["exact", "sparse"])
def test_uniform_transmission_delay_keeps_the_mapping_exact(variant, inputs):
    calibration, x = inputs
    model = _model("residual")
    plain = ttfs_brian.convert(model, calibration, variant=variant, dt=0.05)
    delayed = ttfs_brian.convert(model, calibration, variant=variant, dt=0.05, delay_ms=0.5)
    depth = {"input": 0}
    for layer in delayed.layers.values():  # every layer's window moves by D per layer on its longest path
        if layer.projections:
            depth[layer.name] = max(depth[p.source] for p in layer.projections) + 1
            shift = delayed.layers[layer.name].t_min - plain.layers[layer.name].t_min
            assert shift == pytest.approx(0.5 * depth[layer.name], abs=1e-9), layer.name
    assert ttfs_brian.verify(delayed, model, calibration).failures() == []
    a = simulate_analytic(delayed, x)
    np.testing.assert_allclose(a.logits, simulate_analytic(plain, x).logits, rtol=0, atol=1e-9)
    assert_spikes_match(a, Simulator(delayed, dt=0.05, codegen_target="numpy").run(x))


def test_brian_objects_are_named_after_layers_and_users_can_add_monitors(inputs):
    import brian2 as b2

    calibration, x = inputs
    net = ttfs_brian.convert(_model("residual"), calibration, dt=0.05)
    layer = net.layers["layer1.relu_1"]
    sim = Simulator(net, dt=0.05, codegen_target="numpy",
                    setup=lambda built: [b2.StateMonitor(built.groups["layer1.relu_1"], "v", record=[0, 5],
                                                         name="my_monitor")])
    res = sim.run(x[:2])
    names = {obj.name for obj in sim.network.objects}
    assert {"layer1_relu_1", "layer1_relu_1__from__layer1_relu", "layer1_relu_1__from__relu", "my_monitor"} <= names
    monitor = sim.extra[0]
    assert monitor.v.shape[0] == 2 and monitor.v.shape[1] == sim.steps_per_round()
    # neuron 0 of replica 0 (sample 0): v stays below its threshold until the recorded spike, then above
    t_spike = res.spike_times["layer1.relu_1"][0].reshape(-1)[0]
    theta = layer.arrays["threshold"].reshape(-1)[0]
    t, v = np.asarray(monitor.t / b2.ms), np.asarray(monitor.v[0])
    assert (v[t < t_spike - 1e-9] < theta).all() and (v[t > t_spike + 1e-9] >= theta - 1e-9).all()
    assert (t > t_spike).any() and (t < t_spike).any()


def test_delays_off_the_step_are_a_clear_error(inputs):
    calibration, _ = inputs
    net = ttfs_brian.convert(_model("residual"), calibration)  # no dt: delays anywhere
    with pytest.raises(InputError, match="convert with dt="):
        Simulator(net, dt=0.05, codegen_target="numpy")


def test_version_1_files_still_load():
    from pathlib import Path

    data = Path(__file__).parent / "data"
    for variant in ("exact", "sparse"):
        net = ttfs_brian.load(data / f"v1_{variant}.npz")
        expected = np.load(data / f"v1_{variant}_expected.npz")
        res = simulate_analytic(net, expected["x"])
        np.testing.assert_allclose(res.logits, expected["logits"], rtol=0, atol=1e-12)
        for key in res.spike_times:
            np.testing.assert_allclose(res.spike_times[key], expected[key], rtol=0, atol=1e-12, equal_nan=True)


class Mul(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(BasicBlock(1, 2, 1))
        self.fc = nn.Linear(2 * 16, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.layer1(x) * 2, 1))


class Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.GELU())
        self.fc = nn.Linear(2 * 16, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.layer1(x), 1))


class AddConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 16, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.block(x) + 1.0), 1))


class AddThenConv(nn.Module):
    """An addition of two Conv outputs consumed by another Conv with no ReLU: not a linear composition we build."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 1)
        self.c = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 16, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.c(self.a(x) + self.b(x))), 1))


@pytest.mark.parametrize("model,match", [
    (Mul(), r"mul in module 'layer1'|mul in the model's forward"),
    (Gelu(), r"module 'layer1.1' of type GELU"),
    (AddConstant(), r"adds a constant"),
    (AddThenConv(), r"module 'c' \(Conv2d\) applies a linear map to add"),
])
def test_unsupported_operations_name_their_module(model, match):
    x = np.random.default_rng(0).random((8, 1, 4, 4)).astype(np.float32)
    with pytest.raises((UnsupportedModuleError, ConversionError), match=match):
        ttfs_brian.convert(model.eval(), x)


class TorchvisionVGG(nn.Module):
    """torchvision's VGG layout (features, AdaptiveAvgPool2d((7, 7)), classifier with Dropout), small."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2, 2), nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(8 * 7 * 7, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 16),
                                        nn.ReLU(True), nn.Dropout(), nn.Linear(16, 3))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@pytest.mark.parametrize("size", [4, 28])  # 1x1 maps replicated to 7x7 (absorbed by the Linear); 7x7 (identity)
def test_torchvision_style_vgg(size):
    torch.manual_seed(0)
    model = TorchvisionVGG()
    randomize_batchnorm(model, np.random.default_rng(0))
    x = np.random.default_rng(1).random((20, 1, size, size)).astype(np.float32)
    for variant in ("exact", "sparse"):
        net = ttfs_brian.convert(model.eval(), x, variant=variant)
        assert ttfs_brian.verify(net, model, x).failures() == []
