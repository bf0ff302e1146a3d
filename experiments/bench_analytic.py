"""Time the analytic engine against the float64 torch forward pass of the same network.

LeNet-5 with BatchNorm (the bundled checkpoint), 1,000 MNIST test images (28x28), both variants.
Both are timed in the same process, interleaved, median of ``--repeats`` runs; the ratio is
analytic / torch. Writes ``results/bench_analytic.csv``.

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
TARGETS = {"sparse": 2.0, "exact": 5.0}
RESULTS = Path(__file__).resolve().parent.parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_analytic.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, record = zoo.load_pretrained("lenet5", "mnist5k")
    mnist = data.mnist5k()
    x = mnist.x_test[: args.batch]
    reference = copy.deepcopy(model).double().eval()
    x_torch = torch.as_tensor(x, dtype=torch.float64)
    rows = []
    for variant in ("sparse", "exact"):
        net = ttfs_brian.convert(model, mnist.x_train, variant=variant)
        res = simulate_analytic(net, x)  # warm-up, and the correctness figures
        check = ttfs_brian.verify(net, model, x, res)
        torch_s, analytic_s = [], []
        for _ in range(args.repeats):
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
            "model": "lenet5_bn", "variant": variant, "batch": len(x), "threads": torch.get_num_threads(),
            "torch_forward_s": t_torch, "analytic_s": t_analytic, "ratio": t_analytic / t_torch,
            "target_ratio": TARGETS[variant], "meets_target": t_analytic / t_torch <= TARGETS[variant],
            "spikes_per_neuron": report["spikes"].sum() / (report["neurons"].sum() * len(x)),
            "clipped": int(report["clipped"].sum()), "early_fired": int(report["early_fired"].sum()),
            "max_rel_err": float(check.layers["max_rel_err"].max()), "logit_max_rel_err": check.logit_max_rel_err,
            "agreement": check.agreement, "machine": platform.processor() or platform.machine(),
        })
        log.info("%s: torch %.4f s, analytic %.4f s, ratio %.2f (target <= %.0f)", variant, t_torch, t_analytic,
                 t_analytic / t_torch, TARGETS[variant])
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    log.info("wrote %s\n%s", args.out, table.to_string(index=False))


if __name__ == "__main__":
    main()
