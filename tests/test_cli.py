"""The ttfs-brian console script: convert, verify, simulate."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

CLI = [sys.executable, "-m", "ttfs_brian.cli"]


def _run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    torch.save(model, root / "model.pt")
    x = np.random.default_rng(0).random((30, 1, 4, 4)).astype(np.float32)
    np.save(root / "x.npy", x)
    return root


def test_convert_then_verify(files):
    out = _run("convert", files / "model.pt", files / "x.npy", "-o", files / "net.npz", "--variant", "sparse",
               "--dt", "0.01")
    assert out.returncode == 0, out.stderr
    assert (files / "net.npz").exists() and "wrote" in out.stdout
    out = _run("verify", files / "net.npz", files / "model.pt", files / "x.npy")
    assert out.returncode == 0, out.stderr
    assert "prediction agreement: 100.0000%" in out.stdout and "max_rel_err" in out.stdout


def test_simulate_writes_logits(files):
    _run("convert", files / "model.pt", files / "x.npy", "-o", files / "net2.npz")
    out = _run("simulate", files / "net2.npz", files / "x.npy", "-o", files / "logits.npy")
    assert out.returncode == 0, out.stderr
    assert np.load(files / "logits.npy").shape == (30, 3)


def test_bundled_model_spec(files, tmp_path):
    x = np.random.default_rng(1).random((8, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "digits.npy", x)
    out = _run("convert", "zoo:lenet5_mnist5k", tmp_path / "digits.npy", "-o", tmp_path / "lenet.npz")
    assert out.returncode == 0, out.stderr
    assert "features.3" in out.stdout


def test_clear_errors(files, tmp_path):
    out = _run("convert", tmp_path / "missing.pt", files / "x.npy", "-o", tmp_path / "n.npz")
    assert out.returncode != 0 and "does not exist" in out.stderr
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "state.pt")
    out = _run("convert", tmp_path / "state.pt", files / "x.npy", "-o", tmp_path / "n.npz")
    assert out.returncode != 0 and "not a torch.nn.Module" in out.stderr
    np.save(tmp_path / "wrong.npy", np.random.default_rng(0).random((3, 5)))
    out = _run("convert", files / "model.pt", tmp_path / "wrong.npy", "-o", tmp_path / "n.npz")
    assert out.returncode == 2 and "calibration data" in out.stderr
