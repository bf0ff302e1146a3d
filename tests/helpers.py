"""Random ReLU networks drawn from the supported set, for property-based tests."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from hypothesis import strategies as st


def randomize_batchnorm(model: nn.Module, rng: np.random.Generator, negative: bool = True) -> None:
    """Random eval-mode statistics; with ``negative`` some channels get a negative scale."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            gamma = rng.uniform(0.5, 1.5, n) * (np.where(rng.random(n) < 0.4, -1, 1) if negative else 1)
            module.weight.data = torch.as_tensor(gamma, dtype=torch.float32)
            module.bias.data = torch.as_tensor(rng.uniform(-0.5, 0.5, n), dtype=torch.float32)
            module.running_mean.data = torch.as_tensor(rng.uniform(-0.5, 0.5, n), dtype=torch.float32)
            module.running_var.data = torch.as_tensor(rng.uniform(0.5, 2.0, n), dtype=torch.float32)
    model.eval()


@st.composite
def conv_block(draw, channels: int) -> tuple[list[nn.Module], int]:
    out = draw(st.sampled_from([2, 4]))
    groups = draw(st.sampled_from([g for g in (1, 2) if channels % g == 0 and out % g == 0]))
    conv = nn.Conv2d(channels, out, kernel_size=draw(st.sampled_from([1, 2, 3])), stride=draw(st.sampled_from([1, 2])),
                     padding=draw(st.sampled_from([0, 1])), dilation=draw(st.sampled_from([1, 2])), groups=groups)
    order = draw(st.sampled_from(["bn_relu", "relu_bn", "relu", "conv_pool_relu"]))
    pool = draw(st.sampled_from(["none", "max", "max_pad", "avg"]))
    pools = {"none": [], "max": [nn.MaxPool2d(2)], "max_pad": [nn.MaxPool2d(3, stride=2, padding=1)],
             "avg": [nn.AvgPool2d(2)]}
    if order == "conv_pool_relu":
        return [conv, nn.MaxPool2d(2), nn.ReLU()], out
    layers = {"bn_relu": [conv, nn.BatchNorm2d(out), nn.ReLU()], "relu_bn": [conv, nn.ReLU(), nn.BatchNorm2d(out)],
              "relu": [conv, nn.ReLU()]}[order]
    return layers + pools[pool], out


@st.composite
def random_network(draw) -> tuple[nn.Module, tuple[int, ...]]:
    """A random supported model and its input shape (weights set by the caller's seed)."""
    if draw(st.booleans()):
        channels = draw(st.sampled_from([1, 2]))
        size = draw(st.integers(6, 10))
        shape: tuple[int, ...] = (channels, size, size)
        layers: list[nn.Module] = []
        for _ in range(draw(st.integers(1, 2))):
            block, channels = draw(conv_block(channels))
            layers += block
        layers.append(nn.Flatten())
    else:
        shape = (draw(st.integers(3, 12)),)
        layers = []
    probe = nn.Sequential(*layers).eval()
    with torch.no_grad():
        try:
            features = probe(torch.zeros(1, *shape)).reshape(1, -1).shape[1]
        except RuntimeError:
            features = 0
    for _ in range(draw(st.integers(0 if len(shape) == 3 else 1, 2))):
        width = draw(st.integers(3, 12))
        layers.append(nn.Linear(max(features, 1), width))
        if draw(st.booleans()):
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        if draw(st.booleans()):
            layers.append(nn.Dropout(0.3))
        features = width
    layers.append(nn.Linear(max(features, 1), draw(st.integers(2, 5))))
    return nn.Sequential(*layers), shape, features > 0
