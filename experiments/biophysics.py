"""Biophysical synapses and their compensation (issue #21) on the bundled models, in ``results/robustness/biophysics/``.

The grid of :data:`ttfs_brian.study.BIOPHYSICAL_KINDS` (exponential synaptic currents, conductance-based synapses,
delay mismatch, release failures and the leak), both variants: LeNet-5 with the analytic engine on all 1,000 test
digits and the breaking-point search, Brian2 (cpp_standalone, precise) on 20 digits for the kinds it twins;
VGG-small and ResNet-8 with the analytic engine on their first ``--small-samples`` test digits, the grid only
(``--search-small`` adds the search; an event-by-event solve of every synapse costs 0.2-1.8 s per image of these,
3-20x LeNet-5's). Then ``compensation/``: LeNet-5 under the same synaptic time constants and leaks with thresholds
compensated (:mod:`ttfs_brian.compensation`), to set beside the uncompensated rows. Runs on a local Dask cluster and
resumes from the rows.

    python experiments/biophysics.py [--workers 2] [--small-samples 200]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ttfs_brian.study import BIOPHYSICAL_KINDS, Study, run_study, write_report

RESULTS = Path(__file__).resolve().parent.parent / "results" / "robustness"
AS_RUN = "python experiments/biophysics.py --models lenet5_mnist5k --samples 500 --trials 2 --engines analytic"
AS_RUN_SMALL = ("python experiments/biophysics.py --models vgg_small_mnist5k resnet8_mnist5k --small-samples 200 "
                "--trials 1 --engines analytic --no-compensation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["lenet5_mnist5k", "vgg_small_mnist5k", "resnet8_mnist5k"])
    parser.add_argument("--engines", nargs="+", default=["analytic", "brian2"], choices=["analytic", "brian2"],
                        help="Brian2 twins LeNet-5 only")
    parser.add_argument("--samples", type=int, help="LeNet-5's test digits (default: all 1,000)")
    parser.add_argument("--small-samples", type=int, default=200, help="test digits of VGG-small and ResNet-8")
    parser.add_argument("--no-search", action="store_true", help="the grid only, no breaking-point search")
    parser.add_argument("--search-small", action="store_true",
                        help="the breaking-point search for VGG-small and ResNet-8 too (~10 rounds of their cells)")
    parser.add_argument("--no-compensation", action="store_true", help="skip the compensated LeNet-5 rows")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)

    kinds = {kind: dict(spec) for kind, spec in BIOPHYSICAL_KINDS.items()}
    searched = [] if args.no_search else ["analytic"]

    def study_of(model: str) -> Study:  # LeNet-5 in full (Brian2 twin, search); the larger models on fewer digits
        if model == "lenet5_mnist5k":
            return Study(models=[model], engines=args.engines, kinds=kinds, trials=args.trials,
                         brian_trials=args.trials, samples=args.samples, breaking_points=searched)
        return Study(models=[model], engines=["analytic"], kinds=kinds, trials=args.trials, samples=args.small_samples,
                     breaking_points=searched if args.search_small else [])

    studies = [study_of(model) for model in args.models]
    out = args.out / "biophysics"
    out.mkdir(parents=True, exist_ok=True)
    for study in studies:
        rows = run_study(study, out / "rows.csv", workers=args.workers)
    logging.info("wrote %s", write_report(rows, out, searched=searched, commands=[
        "python experiments/biophysics.py   # this folder and ../compensation (resumes from the rows)",
        AS_RUN + "   # LeNet-5 as run here, and ../compensation",
        AS_RUN_SMALL + "   # VGG-small and ResNet-8 as run here"]))
    if args.no_compensation:
        return
    compensated = {kind: {**dict(kinds[kind]), "compensate": True} for kind in ("synaptic_tau", "leak")}
    out = args.out / "compensation"
    out.mkdir(parents=True, exist_ok=True)
    rows = run_study(Study(models=["lenet5_mnist5k"], kinds=compensated, trials=1, samples=args.samples,
                           breaking_points=searched), out / "rows.csv", workers=args.workers)
    logging.info("wrote %s", write_report(rows, out, searched=searched, commands=[
        "python experiments/biophysics.py   # ../biophysics and this folder (resumes from the rows)",
        AS_RUN + "   # as run here"]))


if __name__ == "__main__":
    main()
