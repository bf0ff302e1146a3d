"""Model architectures as code, and the trained checkpoints bundled in ``models/``.

Each checkpoint ``models/<arch>_<dataset>.pt`` is a ``state_dict``; ``models/<arch>_<dataset>.json``
records the training seed, data split, epochs and test accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .errors import InputError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class FC2(nn.Module):
    """784-600-10 fully connected ReLU network (the paper's FC2)."""

    def __init__(self, in_features: int = 784, hidden: int = 600, num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu1(self.fc1(self.flatten(x))))


class LeNet5(nn.Module):
    """LeNet-5 with BatchNorm before each ReLU and max pooling, for 28x28 inputs."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.BatchNorm1d(120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGSmall(nn.Module):
    """VGG-style CNN: 3x3 zero-padded convolutions, BatchNorm *after* ReLU, max pooling."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (16, 16, 32, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(width)]
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
            channels = width
        layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * 3 * 3, 64), nn.ReLU(),
                                        nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsNet(nn.Module):
    """Small CNN for the 8x8 digits: conv(3x3, pad 1) + BN + ReLU + max pool, then 64-32-10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.relu_fc = nn.ReLU()
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.conv(x))))
        return self.fc2(self.relu_fc(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    """ResNet v1 basic block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (identity, or 1x1 conv + BN when the
    shape changes), then ReLU; the layout of torchvision's ``BasicBlock``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet8(nn.Module):
    """ResNet-8 for 28x28 inputs: stem conv3x3-BN-ReLU, three stages of one basic block (identity shortcut,
    then two 1x1-conv+BN projection shortcuts with stride 2), global average pooling, Linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(widths[0], widths[0], 1)
        self.layer2 = BasicBlock(widths[0], widths[1], 2)
        self.layer3 = BasicBlock(widths[1], widths[2], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG16(nn.Module):
    """VGG-16 for 32x32x3 inputs, the layout used for CIFAR-10 in the paper: 13 conv 3x3 (zero padding) with
    BatchNorm before each ReLU, 5 max pools (to 1x1x512), classifier 512-512-10 with dropout."""

    LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in self.LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                        nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "fc2": FC2,
    "lenet5": LeNet5,
    "vgg_small": VGGSmall,
    "digits_net": lambda: DigitsNet(),
    "resnet8": ResNet8,
    "vgg16": VGG16,
}
"""Architecture name -> constructor (for 28x28 single-channel inputs, except ``digits_net``: 8x8, and
``vgg16``: 32x32x3, for CIFAR-10 or ``mnist5k32``)."""


def build(arch: str) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]()


def checkpoint_path(arch: str, dataset: str, models_dir: Path = MODELS_DIR) -> Path:
    return Path(models_dir) / f"{arch}_{dataset}.pt"


def load_pretrained(arch: str, dataset: str, models_dir: Path = MODELS_DIR) -> tuple[nn.Module, dict]:
    """A bundled trained model (in eval mode) and its training record."""
    path = checkpoint_path(arch, dataset, models_dir)
    if not path.exists():
        raise InputError(f"no checkpoint {path}; train it with `ttfs-brian train {arch} --data {dataset}`")
    model = build(arch)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    record = json.loads(path.with_suffix(".json").read_text())
    return model.eval(), record
