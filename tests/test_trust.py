"""Every wrong answer is an error or a flag (issue #5): regressions for defects found by using the package
as a new user would, with ordinary models and ordinary mistakes."""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ttfs_brian
from ttfs_brian.analytic import simulate_analytic
from ttfs_brian.brian import Simulator
from ttfs_brian.errors import (DataFileError, InputError, ModelMismatchError, NetworkFileError, TrainingModeWarning)
from helpers import assert_spikes_match, randomize_batchnorm

CLI = [sys.executable, "-m", "ttfs_brian.cli"]


def cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


# ----------------------------------------------------------------------------- 1: standalone readout
def issue_net(seed: int):
    """The architecture of the report: Conv-ReLU-BN-MaxPool-Conv(stride 2)-BN-ReLU-AvgPool-Linear-ReLU-Linear."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8), nn.MaxPool2d(2),
                          nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(48, 20), nn.ReLU(), nn.Linear(20, 5))
    randomize_batchnorm(model, rng)
    calibration = rng.uniform(-1.5, 2.5, (256, 3, 16, 16)).astype(np.float32)
    x = np.clip(rng.uniform(-1.5, 2.5, (9, 3, 16, 16)), calibration.min(), calibration.max()).astype(np.float32)
    return model, calibration, x


# the two draws (of many tried) whose single-round runs crashed, one per variant
@pytest.mark.parametrize("seed,variant", [(11, "sparse"), (6, "exact")])
def test_standalone_batches_of_1_to_9_match_analytic(seed, variant, tmp_path):
    """A run shorter than 10 ms got an extra step (the round clock's last tick fell within Brian2's 1e-14 s
    clock epsilon of the end), in which inputs of the first step fired again: IndexError in the readout."""
    model, calibration, x = issue_net(seed)
    net = ttfs_brian.convert(model, calibration, variant=variant, dt=0.05)
    sim = Simulator(net, device="cpp_standalone", timing="precise", dt=0.05, build_dir=tmp_path)
    for n in range(1, 10):
        assert_spikes_match(simulate_analytic(net, x[:n]), sim.run(x[:n]))
    assert sim.compilations == 1
    assert sim.period_ms() * sim.rounds < 10.0  # what made them crash


# ----------------------------------------------------------------------------- 2: a module called twice
class TutorialNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial network: one ``self.pool`` used after both convolutions."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@pytest.fixture(scope="module")
def tutorial():
    torch.manual_seed(0)
    model = TutorialNet().eval()
    rng = np.random.default_rng(0)
    return model, rng.random((64, 3, 32, 32)).astype(np.float32), rng.random((3, 3, 32, 32)).astype(np.float32)


def test_module_called_twice_gives_one_layer_per_call(tutorial, tmp_path, variant="exact"):
    model, calibration, x = tutorial
    net = ttfs_brian.convert(model, calibration, variant=variant, dt=0.5)
    res = simulate_analytic(net, x)
    assert res.spike_times["pool"].shape == (3, 6, 14, 14)
    assert res.spike_times["pool_1"].shape == (3, 16, 5, 5)
    assert {"pool", "pool_1"} <= set(res.report["layer"])
    check = ttfs_brian.verify(net, model, x, res)
    assert check.failures() == [], check
    assert {"pool", "pool_1"} <= set(check.layers["layer"])
    brian = Simulator(net, device="cpp_standalone", dt=0.5, build_dir=tmp_path).run(x)
    assert_spikes_match(res, brian)
    assert ttfs_brian.verify(net, model, x, brian).failures() == []


# ----------------------------------------------------------------------------- 3: NaN hyper-parameters
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


X = np.random.default_rng(0).random((50, 4)).astype(np.float32)


@pytest.mark.parametrize("option", [{"zeta": float("nan")}, {"zeta": float("inf")}, {"tau_c": float("nan")},
                                    {"tau_c": float("inf")}, {"dt": float("nan")}, {"dt": float("inf")},
                                    {"input_range": (float("nan"), 1.0)}, {"input_range": (0.0, float("inf"))},
                                    {"s_max": float("nan")}, {"s_min": float("-inf")}])
def test_non_finite_hyper_parameters_are_rejected(option):
    with pytest.raises(InputError, match="finite|NaN or Inf"):
        ttfs_brian.convert(mlp(), X, **option)


def test_non_finite_dt_rejected_by_simulator_and_cli(tmp_path):
    net = ttfs_brian.convert(mlp(), X)
    for dt in (float("nan"), float("inf")):
        with pytest.raises(InputError, match="dt"):
            Simulator(net, dt=dt)
    torch.save(mlp(), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", X)
    out = cli("convert", tmp_path / "m.pt", tmp_path / "x.npy", "-o", tmp_path / "n.npz", "--zeta", "nan")
    assert out.returncode == 2 and "zeta" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "n.npz").exists()


def test_verify_fails_on_a_nan_network(tmp_path):
    model = mlp()
    net = ttfs_brian.convert(model, X)
    net.layers["1"].arrays["threshold"][0] = np.nan
    net.save(tmp_path / "nan.npz")
    torch.save(model, tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", X)
    out = cli("verify", tmp_path / "nan.npz", tmp_path / "m.pt", tmp_path / "x.npy")
    assert out.returncode == 1 and "NaN" in out.stderr


# ----------------------------------------------------------------------------- 4: vacuous verification
def test_verify_fails_when_samples_are_flagged(tmp_path):
    model = mlp()
    net = ttfs_brian.convert(model, X)  # calibrated on [0, 1]
    check = ttfs_brian.verify(net, model, X * 255)
    assert check.flagged_samples == len(X)
    problems = check.failures()
    assert problems and "outside the calibrated range" in problems[-1] and "input_range" in problems[-1]
    assert check.failures(max_flagged=len(X)) == []
    net.save(tmp_path / "n.npz")
    torch.save(model, tmp_path / "m.pt")
    np.save(tmp_path / "x255.npy", X * 255)
    out = cli("verify", tmp_path / "n.npz", tmp_path / "m.pt", tmp_path / "x255.npy")
    assert out.returncode == 1 and "flagged" in out.stderr and "input_range" in out.stderr
    out = cli("verify", tmp_path / "n.npz", tmp_path / "m.pt", tmp_path / "x255.npy", "--max-flagged", len(X))
    assert out.returncode == 0, out.stderr


# ----------------------------------------------------------------------------- 5: grid timing error bound
@pytest.mark.parametrize("variant", ["exact", "sparse"])
def test_grid_results_never_disagree_unflagged(variant):
    """At dt = 1 ms grid timing is far off; every sample that may be wrong must be flagged, and every spike of
    the others must lie within the propagated bound."""
    from ttfs_brian import data, zoo

    model, _ = zoo.load_pretrained("digits_net", "digits")
    digits = data.digits()
    x = digits.x_test[:200]
    net = ttfs_brian.convert(model, digits.x_train, variant=variant, dt=1.0)
    res = Simulator(net, timing="grid", dt=1.0, codegen_target="numpy").run(x)
    relu = model(torch.as_tensor(x)).argmax(1).numpy()
    wrong = res.predictions != relu
    assert wrong.any()  # the bound has something to catch
    assert res.flagged[wrong].all()
    assert res.reasons["uncertain_prediction"].sum() > 0
    check = ttfs_brian.verify(net, model, x, res)
    assert check.failures(max_flagged=len(x)) == [], check
    assert (res.report["error_bound_ms"].iloc[1:] > 1.0).all()
    # the bound is a worst case over the signs of all errors (about 20 times the measured error here), yet at
    # a fine step it certifies most samples
    fine = Simulator(net, timing="grid", dt=0.001, codegen_target="numpy").run(x[:20])
    assert fine.flagged.sum() <= 2


@pytest.mark.parametrize("seed", range(4))
def test_grid_spike_errors_within_bound_on_random_nets(seed):
    model, calibration, x = issue_net(seed)
    net = ttfs_brian.convert(model, calibration, variant=("exact", "sparse")[seed % 2], dt=0.05)
    exact = simulate_analytic(net, x)
    grid = Simulator(net, timing="grid", dt=0.05, codegen_target="numpy").run(x)
    # the bound covers every spike of a sample without clipping or early firing (uncertain predictions included)
    ok = ~exact.flagged & ~grid.reasons["clipped"] & ~grid.reasons["early_fired"] & ~grid.reasons["input_out_of_range"]
    assert ok.sum() >= 3
    for name, bound in grid.error_bound.spike_ms.items():
        t_max = net.layers[name].t_max
        a, b = (np.where(np.isnan(t), t_max, t)[ok].reshape(ok.sum(), -1)
                for t in (exact.spike_times[name], grid.spike_times[name]))
        assert (np.abs(a - b) <= bound[None, :] + 1e-9).all(), name
        assert np.abs(a - b).max() > 0.01  # grid timing really moved spikes
    assert (np.abs(exact.logits - grid.logits)[ok] <= grid.error_bound.logits + 1e-9).all()


# ----------------------------------------------------------------------------- 6: BatchNorm in training mode
def test_training_mode_warns():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))  # not .eval()
    with pytest.warns(TrainingModeWarning, match=r"model\.eval\(\)"):
        ttfs_brian.convert(model, X)
    with warnings_as_errors():
        ttfs_brian.convert(model.eval(), X)


class warnings_as_errors:
    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", TrainingModeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ----------------------------------------------------------------------------- 8: empty batches
def test_empty_batch_is_a_clear_error(tmp_path):
    model = mlp()
    net = ttfs_brian.convert(model, X)
    for call in (lambda: ttfs_brian.simulate(net, X[:0]), lambda: ttfs_brian.verify(net, model, X[:0]),
                 lambda: Simulator(net, codegen_target="numpy").run(X[:0])):
        with pytest.raises(InputError, match="empty"):
            call()
    net.save(tmp_path / "n.npz")
    np.save(tmp_path / "empty.npy", X[:0])
    out = cli("simulate", tmp_path / "n.npz", tmp_path / "empty.npy")
    assert out.returncode == 2 and "empty" in out.stderr and "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- 9: files and mismatches
def test_bad_files_give_one_clear_line(tmp_path):
    model = mlp()
    net = ttfs_brian.convert(model, X)
    path = net.save(tmp_path / "n.npz")
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(64)  # corrupt compressed data inside the archive
    (tmp_path / "corrupt.npz").write_bytes(bytes(raw))
    with pytest.raises(NetworkFileError, match="corrupt"):
        ttfs_brian.load(tmp_path / "corrupt.npz")
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(NetworkFileError, match=r"single array \(\.npy\)"):
        ttfs_brian.load(tmp_path / "x.npy")
    torch.save(model, tmp_path / "m.pt")
    for args, expected in [
        (("simulate", tmp_path / "corrupt.npz", tmp_path / "x.npy"), "corrupt"),
        (("simulate", tmp_path / "x.npy", tmp_path / "x.npy"), "single array"),
        (("convert", tmp_path / "m.pt", path, "-o", tmp_path / "o.npz"), ".npz archive"),
    ]:
        out = cli(*args)
        assert out.returncode == 2 and expected in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_model_and_network_mismatch(tmp_path):
    net = ttfs_brian.convert(mlp(), X)
    other = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 2)).eval()
    with pytest.raises(ModelMismatchError, match="does not match"):
        ttfs_brian.verify(net, other, X)
    wrong_input = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with pytest.raises(ModelMismatchError, match="failed on data"):
        ttfs_brian.verify(net, wrong_input, X)
    net.save(tmp_path / "n.npz")
    torch.save(other, tmp_path / "other.pt")
    np.save(tmp_path / "x.npy", X)
    out = cli("verify", tmp_path / "n.npz", tmp_path / "other.pt", tmp_path / "x.npy")
    assert out.returncode == 2 and "does not match" in out.stderr and "Traceback" not in out.stderr


def test_wrong_calibration_shape_prints_one_line(tmp_path):
    torch.save(mlp(), tmp_path / "m.pt")
    np.save(tmp_path / "wrong.npy", np.random.default_rng(0).random((10, 5)))
    out = cli("convert", tmp_path / "m.pt", tmp_path / "wrong.npy", "-o", tmp_path / "n.npz")
    assert out.returncode == 2 and "calibration data of shape (2, 5)" in out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr  # no traceback, no fx graph dump


# ----------------------------------------------------------------------------- 10: view/reshape to (N, -1)
class Flattening(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if self.how == "view_shape":
            x = x.view(x.shape[0], -1)
        elif self.how == "reshape_shape":
            x = x.reshape(x.shape[0], -1)
        elif self.how == "view_size":
            x = x.view(x.size(0), -1)
        else:
            x = x.view(-1, 2 * 4 * 4)
        return self.fc(x)


@pytest.mark.parametrize("how", ["view_shape", "reshape_shape", "view_size", "view_minus_one"])
def test_flatten_by_view_or_reshape(how):
    x = np.random.default_rng(1).random((20, 1, 4, 4)).astype(np.float32)
    model = Flattening(how).eval()
    net = ttfs_brian.convert(model, x)
    assert ttfs_brian.verify(net, model, x).failures() == []


# ----------------------------------------------------------------------------- 11, 14: logging
def test_brian_runs_log_progress_and_out_of_range_inputs(caplog):
    net = ttfs_brian.convert(mlp(), X, input_range=(0.0, 1.0))
    x = X[:3].copy()
    x[0, 0] = 2.0
    with caplog.at_level(logging.INFO, logger="ttfs_brian"):
        res = Simulator(net, codegen_target="numpy").run(x)
    assert "compiles its code objects" in caplog.text and "building the Brian2 network" in caplog.text
    assert "1 input values in 1 of 3 samples lie outside the calibrated range" in caplog.text
    assert res.reasons["input_out_of_range"].tolist() == [True, False, False]


def test_cli_warns_that_dt_does_not_apply_to_the_analytic_engine(tmp_path):
    ttfs_brian.convert(mlp(), X).save(tmp_path / "n.npz")
    np.save(tmp_path / "x.npy", X)
    out = cli("simulate", tmp_path / "n.npz", tmp_path / "x.npy", "--dt", "0.5")
    assert out.returncode == 0 and "--dt" in out.stderr and "ignores them" in out.stderr


# ----------------------------------------------------------------------------- 12, 13: readable output
def test_report_prints_every_column():
    res = ttfs_brian.simulate(ttfs_brian.convert(mlp(), X), X)
    text = str(res.report)
    assert "..." not in text and all(column in text for column in res.report.columns)
    assert repr(res.report) == text


@pytest.mark.parametrize("command", ["convert", "verify", "simulate", "build", "train", "table", "plot"])
def test_help_of_every_subcommand(command):
    from ttfs_brian.cli import build_parser

    out = cli(command, "--help")
    assert out.returncode == 0
    assert "exit status" in out.stdout and "(default:" in out.stdout
    subparsers = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for action in subparsers.choices[command]._actions:
        assert action.help, f"{command}: argument {action.dest!r} has no help"
