"""The main job, end to end, on bundled data and models (no download, no server).

Converts the bundled LeNet-5 (BatchNorm, max pooling; trained on 4,000 MNIST digits) into both TTFS
variants, runs the analytic engine on the 1,000 test digits and Brian2 (cpp_standalone, precise
spike timing) on the first ``--brian-images`` of them, checks every spike against the float64 ReLU
network, prints the table, and writes the figures to ``output/figures``.

    make demo        # or: python experiments/demo.py
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ttfs_brian.plots import lenet_figures
from ttfs_brian.table import ENGINES, run_row

log = logging.getLogger("demo")
OUTPUT = Path(__file__).resolve().parent.parent / "output"
SHOWN = ["variant", "engine", "timing", "n_test", "relu_acc", "snn_acc", "agreement", "flagged", "max_abs_dt_ms",
         "max_logit_err", "spikes_per_neuron", "wall_s_per_image"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brian-images", type=int, default=1000, help="test digits simulated in Brian2")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    brian = replace(ENGINES["precise"], subset=args.brian_images)
    rows = []
    for variant in ("exact", "sparse"):
        for engine in (ENGINES["analytic"], brian):
            log.info("LeNet-5, %s variant, %s engine ...", variant, engine.name)
            rows.append(run_row("mnist5k", "lenet5", variant, engine, build_root=args.out / "brian2"))
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "demo_table.csv", index=False)
    figures = lenet_figures(args.out / "figures")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        log.info("\nLeNet-5 on MNIST (bundled), converted and simulated; compared with the float64 ReLU network:\n%s",
                 table[SHOWN].to_string(index=False))
    log.info("\nfigures: %s", ", ".join(str(p) for p in figures))


if __name__ == "__main__":
    main()
