"""Time the analytic engine's event-by-event solvers with and without merging simultaneous inputs.

For the kinds solved synapse by synapse without a closed form (``synaptic_tau``, ``conductance``, ``leak``), both
variants of the bundled models: :func:`ttfs_brian.crossings.merged_events` as shipped (inputs arriving together
merged, rows banded by their event count, leaky sums summed directly) against one column per synapse and every
leaky sum in log space, the solvers' way before; interleaved in one process, median of ``--repeats`` runs, with
the largest spike-time difference between the two. Writes ``results/bench_events.csv``.

    python experiments/bench_events.py [--images 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ttfs_brian import crossings
from ttfs_brian.analytic import simulate_analytic
from ttfs_brian.perturb import Perturbation
from ttfs_brian.study import _model, _network

log = logging.getLogger("bench_events")
RESULTS = Path(__file__).resolve().parent.parent / "results"
KINDS = {"synaptic_tau": 3.0, "conductance": 0.1, "leak": 30.0}


def per_synapse(times, values, keep):
    """Every input its own column, no rows banded: what the solvers saw before merging."""
    yield torch.arange(len(times)), torch.where(keep, times, torch.inf), tuple(torch.where(keep, v, 0.0)
                                                                               for v in values)


@contextlib.contextmanager
def unmerged():
    saved = crossings.merged_events, crossings.DIRECT_LIMIT
    crossings.merged_events, crossings.DIRECT_LIMIT = per_synapse, 0.0
    try:
        yield
    finally:
        crossings.merged_events, crossings.DIRECT_LIMIT = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_small", "resnet8"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_events.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # as in a study's worker

    rows = []
    for arch in args.models:
        x = _model(arch, "mnist5k", None)[2][:args.images]
        for variant in ("exact", "sparse"):
            net = _network(arch, "mnist5k", None, variant, 0.5, 0.2)
            for kind, level in KINDS.items():
                p = Perturbation(kind, level)
                merged_s, plain_s = [], []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    merged = simulate_analytic(net, x, p)
                    merged_s.append(time.perf_counter() - start)
                    with unmerged():
                        start = time.perf_counter()
                        plain = simulate_analytic(net, x, p)
                        plain_s.append(time.perf_counter() - start)
                dt = max(float(np.nanmax(np.abs(merged.spike_times[k] - plain.spike_times[k]), initial=0.0))
                         for k in merged.spike_times)
                same_silence = all(np.array_equal(np.isnan(merged.spike_times[k]), np.isnan(plain.spike_times[k]))
                                   for k in merged.spike_times)
                t_merged, t_plain = float(np.median(merged_s)), float(np.median(plain_s))
                rows.append({"model": arch, "variant": variant, "kind": kind, "level": level, "images": len(x),
                             "per_synapse_s_per_image": t_plain / len(x), "merged_s_per_image": t_merged / len(x),
                             "speedup": t_plain / t_merged, "max_abs_dt_ms": dt, "same_silent_neurons": same_silence,
                             "max_abs_logit_diff": float(np.abs(merged.logits - plain.logits).max()),
                             "machine": platform.processor() or platform.machine()})
                log.info("%s %s %s: per synapse %.3f s/image, merged %.3f s/image (%.2fx), max |dt| %.1e ms", arch,
                         variant, kind, t_plain / len(x), t_merged / len(x), t_plain / t_merged, dt)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    log.info("wrote %s\n%s", args.out, table.to_string(index=False))


if __name__ == "__main__":
    main()
