"""How fast robustness studies run on Dask: cells per minute with 1 and 2 workers, analytic and Brian2, and the
reference spike-jitter grid on LeNet-5 (8 levels x 16 trials x 1,000 test images, analytic).

Each configuration runs a fresh study into a temporary file on a fresh ``LocalCluster`` (one thread per
worker), timed from the cluster's start to the last row, so worker start-up, data loading, conversion
and (Brian2) compilation are included. Rows go to ``results/bench_sweep.csv`` as they are measured.

    python experiments/bench_sweep.py [--workers 1 2]
"""
from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

from ttfs_brian.study import JITTER_LEVELS, Study, run_study
from ttfs_brian.store import RowStore

log = logging.getLogger("bench_sweep")
RESULTS = Path(__file__).resolve().parent.parent / "results"
COLUMNS = ["config", "engine", "variant", "workers", "cells", "images_per_cell", "wall_s", "cells_per_min",
           "target_s", "meets_target", "machine"]
KEY = ["config", "engine", "variant", "workers", "cells", "images_per_cell"]


def timed(study: Study, workers: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        rows = run_study(study, Path(folder) / "rows.csv", workers=workers)
        return len(rows), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_sweep.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    store = RowStore(args.out, COLUMNS, KEY)
    jitter = {"spike_jitter": {"levels": list(JITTER_LEVELS[:2]), "latency_ms": 0.2}}
    configs = [
        ("throughput", "analytic", Study(variants=["exact"], engines=["analytic"], kinds=jitter, trials=4)),
        ("throughput", "brian2", Study(variants=["exact"], engines=["brian2"], kinds=jitter, trials=4,
                                       brian_samples=50, brian_trials=4)),
    ]
    for config, engine, study in configs:
        for workers in args.workers:
            images = 1000 if engine == "analytic" else study.brian_samples
            key = {"config": config, "engine": engine, "variant": "exact", "workers": workers, "cells": 8,
                   "images_per_cell": images}
            if store.has(key):
                continue
            cells, wall = timed(study, workers)
            store.append({**key, "cells": cells, "wall_s": wall, "cells_per_min": 60 * cells / wall,
                          "target_s": float("nan"), "meets_target": "", "machine": platform.machine()})
            log.info("%s %s, %d workers: %d cells in %.1f s", config, engine, workers, cells, wall)
    reference = {"spike_jitter": {"levels": list(JITTER_LEVELS), "latency_ms": 0.2}}
    for variant in ("exact", "sparse"):
        key = {"config": "reference grid LeNet-5 (8 levels x 16 trials)", "engine": "analytic", "variant": variant,
               "workers": 2, "cells": 128, "images_per_cell": 1000}
        if store.has(key):
            continue
        cells, wall = timed(Study(variants=[variant], engines=["analytic"], kinds=reference, trials=16), 2)
        store.append({**key, "cells": cells, "wall_s": wall, "cells_per_min": 60 * cells / wall, "target_s": 180.0,
                      "meets_target": wall <= 180.0, "machine": platform.machine()})
        log.info("reference grid %s: %d cells in %.1f s", variant, cells, wall)
    log.info("wrote %s\n%s", args.out, store.read().to_string(index=False))


if __name__ == "__main__":
    main()
