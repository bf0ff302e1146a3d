"""Offline loaders (CIFAR-10 on a tiny fake copy the test writes) and the training entry point."""
import pickle

import numpy as np
import pytest
import torch

from ttfs_brian import data, training, zoo
from ttfs_brian.errors import InputError


def test_mnist5k_split_is_fixed_and_disjoint():
    a, b = data.mnist5k(), data.mnist5k()
    assert a.x_train.shape == (4000, 1, 28, 28) and a.x_test.shape == (1000, 1, 28, 28)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    train_rows = {row.tobytes() for row in a.x_train.reshape(4000, -1)[:500]}
    assert not any(row.tobytes() in train_rows for row in a.x_test.reshape(1000, -1))
    assert set(np.unique(a.y_test)) == set(range(10))


def test_digits():
    d = data.digits()
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.max() <= 1.0


def _write_fake_cifar(root, n_per_batch=6):
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n_per_batch))}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    return folder


def test_cifar10_reads_local_copy(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    d = data.load_dataset("cifar10", data_dir=tmp_path)
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    with open(folder / "test_batch", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    np.testing.assert_allclose(d.x_test[0], raw[b"data"][0].reshape(3, 32, 32) / 255.0, rtol=1e-6)


def test_cifar10_missing_copy_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="never downloads"):
        data.cifar10(tmp_path)
    with pytest.raises(ValueError, match="--data-dir"):
        data.load_dataset("cifar10")


def test_training_one_tiny_epoch_is_deterministic(tmp_path):
    d = data.digits()
    model_a, rec_a = training.train("digits_net", d, epochs=1, max_batches=5, out_dir=tmp_path)
    model_b, rec_b = training.train("digits_net", d, epochs=1, max_batches=5)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert rec_a["test_accuracy"] == rec_b["test_accuracy"] > 0.1
    reloaded, record = zoo.load_pretrained("digits_net", "digits", models_dir=tmp_path)
    assert record["seed"] == 0 and record["n_train"] == len(d.x_train)
    x = torch.as_tensor(d.x_test[:20])
    assert torch.equal(reloaded(x), model_a.eval()(x))
