"""The reference robustness grid (SPEC section 8) and every breaking point, on the bundled models, in ``results/robustness/``.

Spike jitter (latency 0.2 ms), input jitter, alpha mismatch and the window margin zeta, 16 trials per
level, both variants: the analytic engine on the test split (or its first ``--samples``) and Brian2
(cpp_standalone, precise timing) on the first ``--brian-samples`` test digits with the first
``--brian-trials`` seeds, the same draws as the analytic cells. Then, for the analytic engine, the search of
:mod:`ttfs_brian.search`: per model, variant and kind, the level that loses 1 % and the level at half the
chance-corrected accuracy, each to a factor 1.25 (``--no-search``: the grid only). Runs on a local Dask cluster
(or ``--scheduler``); rows are appended as cells finish, so an interrupted run resumes where it stopped.

    python experiments/robustness.py [--models lenet5_mnist5k ...] [--workers 2]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ttfs_brian.study import REFERENCE_KINDS, Study, run_study, write_report

RESULTS = Path(__file__).resolve().parent.parent / "results" / "robustness"
MODELS = ["lenet5_mnist5k", "vgg_small_mnist5k", "resnet8_mnist5k"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--engines", nargs="*", default=["analytic", "brian2"])
    parser.add_argument("--variants", nargs="+", default=["exact", "sparse"], choices=["exact", "sparse"])
    parser.add_argument("--kinds", nargs="+", default=list(REFERENCE_KINDS), choices=list(REFERENCE_KINDS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scheduler", help="an existing Dask scheduler (tcp://HOST:PORT)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--brian-samples", type=int, default=20)
    parser.add_argument("--brian-trials", type=int, default=4)
    parser.add_argument("--samples", type=int, help="analytic test samples of each model (default: the test split)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-search", action="store_true", help="the grid only, no breaking-point search")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)

    args.out.mkdir(parents=True, exist_ok=True)
    rows = None
    for model in args.models:
        study = Study(models=[model], engines=args.engines, variants=args.variants,
                      kinds={kind: REFERENCE_KINDS[kind] for kind in args.kinds}, trials=args.trials,
                      brian_samples=args.brian_samples, brian_trials=args.brian_trials, samples=args.samples,
                      breaking_points=[] if args.no_search else ["analytic"])
        rows = run_study(study, args.out / "rows.csv", scheduler=args.scheduler, workers=args.workers)
    logging.info("wrote %s", write_report(rows, args.out, commands=[
        "python experiments/robustness.py   # this folder: LeNet-5, VGG-small, ResNet-8 (resumes from rows.csv)",
        "python experiments/robustness.py --models resnet8_mnist5k --trials 4 --workers 1   # ResNet-8 as run here "
        "(4 trials; a worker needs up to 9.5 GiB)",
        "python experiments/robustness.py --models resnet8_mnist5k --engines analytic --variants exact --kinds "
        "spike_jitter zeta --trials 1 --workers 1   # its last searches, one trial per new level (cells of 2-15 min)",
        "ttfs-brian sweep --find-breaking-point   # SPEC's grid and the breaking points on LeNet-5 (local cluster)",
        "ttfs-brian sweep --scheduler tcp://HOST:PORT   # on an existing Dask cluster"],
        searched=[] if args.no_search else ["analytic"]))


if __name__ == "__main__":
    main()
