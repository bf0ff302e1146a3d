"""Time the analytic engine against the float64 torch forward pass of the same network.

LeNet-5 with BatchNorm, 1,000 images of 28x28, both variants, on two networks: the bundled trained
checkpoint on MNIST test digits, and the same architecture with untrained random weights (seeded, BatchNorm
statistics drawn at random) on inputs drawn uniformly from [0, 1], where far more neurons are candidates
for early firing. Both engines are timed in the same process, interleaved, median of ``--repeats``
runs; the ratio is analytic / torch. Writes ``results/bench_analytic.csv``.

    python experiments/bench_analytic.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import copy
import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import ttfs_brian
from ttfs_brian import data, zoo
from ttfs_brian.analytic import simulate_analytic

log = logging.getLogger("bench_analytic")
TARGETS = {"sparse": 1.2, "exact": 2.0}
RESULTS = Path(__file__).resolve().parent.parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_analytic.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    rows = []
    for name, model, calibration, x, input_range in networks(args.batch):
        rows += bench(name, model, calibration, x, input_range, args.repeats)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    log.info("wrote %s\n%s", args.out, table.to_string(index=False))


def networks(batch: int):
    """(name, model, calibration data, test batch, input range) of the trained and the random-weight LeNet-5."""
    model, _ = zoo.load_pretrained("lenet5", "mnist5k")
    mnist = data.mnist5k()
    yield "lenet5_bn", model, mnist.x_train, mnist.x_test[:batch], None
    torch.manual_seed(0)
    random = zoo.build("lenet5")
    for module in random.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(-1.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    random.eval()
    rng = np.random.default_rng(0)
    shape = mnist.x_test.shape[1:]
    yield ("lenet5_bn_random", random, rng.uniform(0, 1, (1000, *shape)).astype(np.float32),
           rng.uniform(0, 1, (batch, *shape)).astype(np.float32), (0.0, 1.0))


def bench(name: str, model, calibration: np.ndarray, x: np.ndarray, input_range, repeats: int) -> list[dict]:
    reference = copy.deepcopy(model).double().eval()
    x_torch = torch.as_tensor(x, dtype=torch.float64)
    rows = []
    for variant in ("sparse", "exact"):
        net = ttfs_brian.convert(model, calibration, variant=variant, input_range=input_range)
        res = simulate_analytic(net, x)  # warm-up, and the correctness figures
        check = ttfs_brian.verify(net, model, x, res)
        torch_s, analytic_s = [], []
        for _ in range(repeats):
            with torch.no_grad():
                start = time.perf_counter()
                reference(x_torch)
                torch_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            simulate_analytic(net, x)
            analytic_s.append(time.perf_counter() - start)
        t_torch, t_analytic = float(np.median(torch_s)), float(np.median(analytic_s))
        report = res.report
        rows.append({
            "model": name, "variant": variant, "batch": len(x), "threads": torch.get_num_threads(),
            "torch_forward_s": t_torch, "analytic_s": t_analytic, "ratio": t_analytic / t_torch,
            "target_ratio": TARGETS[variant], "meets_target": t_analytic / t_torch <= TARGETS[variant],
            "spikes_per_neuron": report["spikes"].sum() / (report["neurons"].sum() * len(x)),
            "clipped": int(report["clipped"].sum()), "early_fired": int(report["early_fired"].sum()),
            "max_rel_err": float(check.layers["max_rel_err"].max()), "logit_max_rel_err": check.logit_max_rel_err,
            "agreement": check.agreement, "machine": platform.processor() or platform.machine(),
        })
        log.info("%s %s: torch %.4f s, analytic %.4f s, ratio %.2f (target <= %.1f)", name, variant, t_torch,
                 t_analytic, t_analytic / t_torch, TARGETS[variant])
    return rows


if __name__ == "__main__":
    main()
