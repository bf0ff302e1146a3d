"""brian2cuda: build cuda_standalone code (no GPU needed) in the Python 3.12 environment of `make cuda-env`.

Skipped where that environment or nvcc is missing. Where a GPU is visible, the built network is also
run and compared with the analytic engine.
"""
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

import ttfs_brian

ROOT = Path(__file__).resolve().parent.parent
PY312 = ROOT / ".venv312" / "bin" / "python"

pytestmark = pytest.mark.skipif(not PY312.exists() or shutil.which("nvcc") is None,
                                reason="needs `make cuda-env` (python3.12) and nvcc")


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    # nvcc needs ~16 s of CPU per code object (Thrust/cuRAND headers), so the smallest network, an input and
    # an integrating output layer with its readout (20 objects instead of 33 with a hidden layer), keeps the
    # build near three minutes
    model = nn.Sequential(nn.Linear(4, 2)).eval()
    x = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    root = tmp_path_factory.mktemp("cuda")
    net = ttfs_brian.convert(model, x, variant="exact", dt=0.01)
    np.save(root / "x.npy", x)
    return net, net.save(root / "net.npz"), root


def test_cuda_standalone_builds(small_net):
    net, path, root = small_net
    build = root / "build"
    out = subprocess.run([str(PY312), "-m", "ttfs_brian.cli", "build", str(path), "--device", "cuda_standalone",
                          "--build-dir", str(build), "--batch", "2", "--compute-capability", "9.0"],
                         capture_output=True, text=True, cwd=root, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "built cuda_standalone" in out.stdout
    binary = build / "main"
    assert binary.exists() and binary.stat().st_size > 0
    makefile = (build / "makefile").read_text()
    assert "-arch=sm_90" in makefile
    if platform.machine() == "x86_64":  # built without a GPU, the binary runs on another machine's CPU
        assert "-march=native" not in makefile and "-march=x86-64-v2" in makefile


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="running cuda_standalone needs a GPU")
def test_cuda_standalone_matches_analytic_on_gpu(small_net):
    net, path, root = small_net
    out = subprocess.run([str(PY312), "-m", "ttfs_brian.cli", "simulate", str(path), str(root / "x.npy"),
                          "--backend", "brian2", "--device", "cuda_standalone", "-o", str(root / "logits.npy")],
                         capture_output=True, text=True, cwd=root, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    reference = ttfs_brian.simulate(net, np.load(root / "x.npy"))
    logits = np.load(root / "logits.npy")
    assert np.max(np.abs(logits - reference.logits)) <= 1e-9 * np.abs(reference.logits).max()
