"""How many samples grid timing leaves uncertain: LeNet-5 in Brian2 (cpp_standalone, grid timing) at several dt.

For each variant and dt: the propagated error bound of every layer (:mod:`ttfs_brian.grid_bound`),
the samples flagged because their prediction could change within the bound, the samples that
disagree with the ReLU network, and the check that no disagreeing sample is unflagged. Rows go to
``results/grid_bound.csv`` as they are measured (reruns skip measured rows).

    python experiments/grid_bound.py [--images 200] [--dts 0.1 0.01 0.001]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

import ttfs_brian
from ttfs_brian import data, zoo
from ttfs_brian.brian import Simulator
from ttfs_brian.store import RowStore

log = logging.getLogger("grid_bound")
RESULTS = Path(__file__).resolve().parent.parent / "results"
COLUMNS = ["model", "variant", "dt", "images", "flagged", "uncertain_prediction", "clipped_or_early",
           "disagree_with_relu", "disagree_unflagged", "max_abs_dt_ms", "max_bound_ms", "logit_bound_max",
           "max_logit_err"]
KEY = ["model", "variant", "dt", "images"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--dts", type=float, nargs="+", default=[0.1, 0.01, 0.001])
    parser.add_argument("--out", type=Path, default=RESULTS / "grid_bound.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    model, _ = zoo.load_pretrained("lenet5", "mnist5k")
    mnist = data.mnist5k()
    x = mnist.x_test[: args.images]
    with torch.no_grad():
        relu = model(torch.as_tensor(x)).argmax(1).numpy()
    store = RowStore(args.out, COLUMNS, KEY)
    for variant in ("exact", "sparse"):
        for dt in args.dts:
            key = {"model": "lenet5", "variant": variant, "dt": dt, "images": len(x)}
            if store.has(key):
                continue
            net = ttfs_brian.convert(model, mnist.x_train, variant=variant, dt=dt)
            exact = ttfs_brian.simulate(net, x)
            grid = Simulator(net, device="cpp_standalone", timing="grid", dt=dt).run(x)
            diff = ttfs_brian.compare(exact, grid)
            disagree = grid.predictions != relu
            row = {**key, "flagged": int(grid.flagged.sum()),
                   "uncertain_prediction": int(grid.reasons["uncertain_prediction"].sum()),
                   "clipped_or_early": int((grid.reasons["clipped"] | grid.reasons["early_fired"]).sum()),
                   "disagree_with_relu": int(disagree.sum()),
                   "disagree_unflagged": int((disagree & ~grid.flagged).sum()),
                   "max_abs_dt_ms": float(diff["max_abs_dt_ms"].iloc[:-1].max()),
                   "max_bound_ms": float(grid.report["error_bound_ms"].max()),
                   "logit_bound_max": float(grid.error_bound.logits.max()),
                   "max_logit_err": float(np.abs(grid.logits - exact.logits).max())}
            log.info("%s", row)
            store.append(row)
    log.info("wrote %s\n%s", args.out, store.read().to_string(index=False))


if __name__ == "__main__":
    main()
