"""Random ReLU networks drawn from the supported set, for property-based tests."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from hypothesis import strategies as st

from ttfs_brian.zoo import BasicBlock


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


class ResidualNet(nn.Module):
    """A small ResNet: stem, an identity block and a projection block, global average pooling."""

    def __init__(self, channels: int = 1, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(4, 4, 1)
        self.layer2 = BasicBlock(4, 6, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class RecipeNet(nn.Module):
    """A DAG described by a static recipe (traceable by torch.fx): each step is one of

    ``("conv", cout, k, stride, pad, dilation, groups, order)`` with order bn_relu / relu_bn / relu,
    ``("residual", cout, stride)`` (a basic block), ``("concat", c_a, c_b, bn_after)``,
    ``("maxpool", k, stride, pad)``, ``("avgpool", k)``; then flatten and Linear layers.
    """

    def __init__(self, recipe: list[tuple], channels: int, size: int, hidden: list[int], classes: int):
        super().__init__()
        self.recipe = recipe
        self.blocks = nn.ModuleList()
        for step in recipe:
            kind = step[0]
            if kind == "conv":
                _, cout, k, stride, pad, dil, groups, order = step
                conv = nn.Conv2d(channels, cout, k, stride, pad, dil, groups)
                bn = nn.BatchNorm2d(cout)
                self.blocks.append(nn.ModuleDict({"conv": conv, "bn": bn}))
                channels = cout
            elif kind == "residual":
                _, cout, stride = step
                self.blocks.append(BasicBlock(channels, cout, stride))
                channels = cout
            elif kind == "concat":
                _, c_a, c_b, _ = step
                self.blocks.append(nn.ModuleDict({"a": nn.Conv2d(channels, c_a, 3, padding=1),
                                                  "b": nn.Conv2d(channels, c_b, 1),
                                                  "bn_b": nn.BatchNorm2d(c_b), "bn": nn.BatchNorm2d(c_a + c_b)}))
                channels = c_a + c_b
            elif kind == "maxpool":
                _, k, stride, pad = step
                self.blocks.append(nn.MaxPool2d(k, stride, pad))
            else:
                self.blocks.append(nn.AvgPool2d(step[1]))
        with torch.no_grad():
            features = self._features(torch.zeros(2, channels if not recipe else self._in_channels(), size, size))
        sizes = [features[0].numel(), *hidden, classes]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def _in_channels(self) -> int:
        first = self.blocks[0]
        if isinstance(first, nn.ModuleDict):
            return (first["conv"] if "conv" in first else first["a"]).in_channels
        if isinstance(first, BasicBlock):
            return first.conv1.in_channels
        raise ValueError("recipes start with a conv, residual or concat step")

    def _features(self, x):
        for step, block in zip(self.recipe, self.blocks):
            kind = step[0]
            if kind == "conv":
                order = step[-1]
                y = block["conv"](x)
                x = {"bn_relu": lambda: torch.relu(block["bn"](y)), "relu_bn": lambda: block["bn"](torch.relu(y)),
                     "relu": lambda: torch.relu(y)}[order]()
            elif kind == "concat":
                x = torch.cat([torch.relu(block["a"](x)), torch.relu(block["bn_b"](block["b"](x)))], dim=1)
                if step[-1]:
                    x = torch.relu(block["bn"](x))
            else:
                x = block(x)
        return x

    def forward(self, x):
        x = torch.flatten(self._features(x), 1)
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < len(self.linears) - 1:
                x = torch.relu(x)
        return x


@st.composite
def random_dag(draw) -> tuple[nn.Module, tuple[int, ...]]:
    """A random conv DAG with residual blocks (identity and projection shortcuts), concatenations, pools."""
    channels = draw(st.sampled_from([1, 2]))
    size = draw(st.integers(6, 9))
    recipe: list[tuple] = []
    c = channels
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "residual", "concat"] + (["maxpool", "avgpool"] if i else [])))
        if kind == "conv":
            cout = draw(st.sampled_from([2, 4]))
            groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0 and cout % g == 0]))
            recipe.append(("conv", cout, draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2])),
                           draw(st.sampled_from([0, 1])), 1, groups,
                           draw(st.sampled_from(["bn_relu", "relu_bn", "relu"]))))
            c = cout
        elif kind == "residual":
            cout = draw(st.sampled_from([c, c + 2]))
            recipe.append(("residual", cout, draw(st.sampled_from([1, 2]))))
            c = cout
        elif kind == "concat":
            recipe.append(("concat", draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])), draw(st.booleans())))
            c = recipe[-1][1] + recipe[-1][2]
        elif kind == "maxpool":
            recipe.append(("maxpool", 2, draw(st.sampled_from([1, 2])), 0))
        else:
            recipe.append(("avgpool", 2))
    hidden = draw(st.lists(st.integers(3, 8), min_size=0, max_size=1))
    try:
        model = RecipeNet(recipe, channels, size, hidden, draw(st.integers(2, 4)))
    except RuntimeError:  # the recipe shrinks the image below a kernel
        return None, (channels, size, size), False
    return model, (channels, size, size), True


def assert_spikes_match(a, b, tol: float = 1e-9) -> None:
    """Every spike and silence of ``b`` as ``a``'s (to ``tol`` ms), logits within ``tol`` relative, the same flags
    and report."""
    for key, ta in a.spike_times.items():
        tb = b.spike_times[key]
        np.testing.assert_array_equal(np.isnan(ta), np.isnan(tb), err_msg=key)
        fired = ~np.isnan(ta)
        assert np.abs(ta[fired] - tb[fired]).max(initial=0) <= tol, key
    assert np.abs(a.logits - b.logits).max() <= tol * max(1.0, np.abs(a.logits).max())
    np.testing.assert_array_equal(a.flagged, b.flagged)
    assert a.report.equals(b.report), f"\n{a.report}\n{b.report}"
