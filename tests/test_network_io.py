"""The network file format: round trip, NumPy-only loading, clear errors for bad files."""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch.nn as nn

import ttfs_brian
from ttfs_brian.comparison import reproduction_failures
from ttfs_brian.errors import NetworkFileError


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(27, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = np.random.default_rng(0).random((20, 1, 6, 6)).astype(np.float32)
    net = ttfs_brian.convert(model, x, variant="exact", dt=0.01)
    path = net.save(tmp_path_factory.mktemp("net") / "net.npz")
    return net, path, x


def test_round_trip_gives_identical_results(converted):
    net, path, x = converted
    loaded = ttfs_brian.load(path)
    assert loaded.variant == net.variant and loaded.dt == net.dt and list(loaded.layers) == list(net.layers)
    assert loaded.windows == net.windows
    for name, layer in net.layers.items():  # the file holds every array bit for bit
        for key, array in layer.arrays.items():
            np.testing.assert_array_equal(array, loaded.layers[name].arrays[key], err_msg=f"{name}/{key}")
        for proj, again in zip(layer.projections, loaded.layers[name].projections):
            assert proj.weight is None or np.array_equal(proj.weight, again.weight)
    # results to the reproducibility contract: MKL may round a product of other buffers differently
    assert not reproduction_failures(ttfs_brian.simulate(net, x), ttfs_brian.simulate(loaded, x))


def test_loading_needs_numpy_only(converted):
    _, path, _ = converted
    code = ("import sys; sys.modules['torch'] = None; sys.modules['pandas'] = None\n"
            f"import ttfs_brian; net = ttfs_brian.load({str(path)!r}); print(len(net.layers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(ttfs_brian.load(path).layers)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip archive at all")
    with pytest.raises(NetworkFileError, match="corrupt or not a ttfs_brian network"):
        ttfs_brian.load(bad)


def test_truncated_file(converted, tmp_path):
    _, path, _ = converted
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(NetworkFileError):
        ttfs_brian.load(cut)


def test_wrong_version(converted, tmp_path):
    _, path, _ = converted
    with np.load(path) as archive:
        entries = {key: archive[key] for key in archive.files}
    header = json.loads(str(entries["__meta__"]))
    header["version"] = 99
    entries["__meta__"] = np.array(json.dumps(header))
    other = tmp_path / "v99.npz"
    np.savez(other, **entries)
    with pytest.raises(NetworkFileError, match="version 99"):
        ttfs_brian.load(other)


def test_foreign_npz(tmp_path):
    other = tmp_path / "foreign.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(NetworkFileError, match="no __meta__"):
        ttfs_brian.load(other)
    assert zipfile.is_zipfile(other)


def test_windows_and_scales(converted):
    net, _, _ = converted
    windows, scales = net.windows, net.scales
    assert {"2", "3", "6"} <= set(windows)  # ReLU and MaxPool2d names of the nn.Sequential
    assert windows["3"] == windows["2"]  # a pool passes its input's window on
    assert windows["6"][0] == windows["3"][1]  # consecutive windows
    for key, scale in scales.items():
        assert scale.shape == net.layer_for(key).shape and np.all(scale > 0)
