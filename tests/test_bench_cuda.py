"""experiments/bench_cuda.py: record a standalone binary's run here, run it elsewhere, replay its result files here.

The GPU step cannot run where no GPU is lent, so the same pipeline is checked with ``cpp_standalone``: the relay
records the binary and its inputs, ``run.sh`` runs them (here, standing in for the GPU machine) and the replay hands
Brian2 the result files that came back, which are then compared with the analytic engine.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import ttfs_brian

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "bench_cuda.py"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_cuda")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = np.random.default_rng(1).random((7, 5)).astype(np.float32)
    ttfs_brian.convert(model, x, variant="exact", dt=0.05).save(root / "mlp.npz")
    np.save(root / "x.npy", x)
    work = root / "work"
    out = bench("prepare", "--device", "cpp_standalone", "--nets", str(root / "mlp.npz"), "--inputs",
                str(root / "x.npy"), "--replicas", "2", "--repeats", "2", "--work", str(work), cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return root, work


def test_recorded_run_replays_with_the_analytic_spike_times(prepared):
    root, work = prepared
    carry = work / "carry"
    assert (carry / "tags").read_text().split() == ["mlp_exact"]
    assert (carry / "mlp_exact.tar.xz").stat().st_size > 0
    fetched = root / "fetched"
    fetched.mkdir()
    ran = subprocess.run(["bash", str(carry / "run.sh"), str(fetched)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert sorted(p.name for p in fetched.glob("mlp_exact.results.tar.xz.part*"))
    out = bench("read", "--fetched", str(fetched), "--work", str(work), "--out", str(root / "bench.csv"), cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    row = pd.read_csv(root / "bench.csv").iloc[0]
    assert row["images"] == 7 and row["replicas"] == 2 and row["rounds"] == 4 and row["repeats"] == 2
    assert row["max_abs_dt_ms"] <= 1e-9
    assert row["spikes_only_brian2"] == 0 and row["spikes_only_analytic"] == 0
    assert row["agreement_with_analytic"] == 1.0
    assert row["run_per_image_ms"] > 0 and row["wall_per_image_ms"] >= row["run_per_image_ms"]


def test_replay_refuses_results_of_other_inputs(prepared):
    """The recorded command line names the input files by their MD5: results of other inputs are refused."""
    root, work = prepared
    fetched = root / "fetched_other"
    fetched.mkdir()
    subprocess.run(["bash", str(work / "carry" / "run.sh"), str(fetched)], check=True, capture_output=True,
                   timeout=300)
    x = np.load(work / "mlp_exact" / "x.npy")
    np.save(work / "mlp_exact" / "x.npy", x[::-1].copy())
    try:
        out = bench("read", "--fetched", str(fetched), "--work", str(work), "--out", str(root / "other.csv"),
                    cwd=root)
    finally:
        np.save(work / "mlp_exact" / "x.npy", x)
    assert out.returncode != 0
    assert "differs from the recorded one" in out.stderr
    assert not (root / "other.csv").exists()
