"""The ``ttfs-brian`` command line.

Models are given as a file written by ``torch.save(model, PATH)`` (a whole pickled module; its
class must be importable) or as ``zoo:ARCH_DATASET`` for a bundled checkpoint, e.g.
``zoo:lenet5_mnist5k``. Data files are ``.npy`` arrays of shape ``(N, ...)``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import TTFSBrianError
from .files import load_array, load_model

EXIT_CODES = """exit status:
  0  success
  1  verify: the verification failed (an unflagged error above the tolerance, or too many flagged samples)
  2  an error: bad arguments, unreadable or mismatched files, an unsupported model, a missing tool"""

log = logging.getLogger("ttfs_brian.cli")


def cmd_convert(args: argparse.Namespace) -> int:
    from .converter import convert

    model = load_model(args.model)
    calibration = load_array(args.calibration, "calibration")
    input_range = tuple(args.input_range) if args.input_range else None
    net = convert(model, calibration, variant=args.variant, zeta=args.zeta, tau_c=args.tau_c,
                  input_range=input_range, dt=args.dt)
    net.save(args.output)
    print(net.summary())
    print(f"wrote {args.output}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from . import simulate
    from .network import load
    from .reference import verify

    net = load(args.network)
    model = load_model(args.model)
    x = load_array(args.data)
    result = simulate(net, x, backend=args.backend, **_brian_options(args))
    report = verify(net, model, x, result)
    print(report)
    problems = report.failures(tolerance=args.tolerance, max_flagged=args.max_flagged)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from . import simulate
    from .network import load

    net = load(args.network)
    result = simulate(net, load_array(args.data), backend=args.backend, **_brian_options(args))
    print(result.report)
    counts = ", ".join(f"{reason} {count}" for reason, count in result.flag_counts().items() if count)
    print(f"flagged samples: {int(result.flagged.sum())} of {len(result.logits)}" + (f" ({counts})" if counts else ""))
    if args.output:
        np.save(args.output, result.logits)
        print(f"wrote logits to {args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .training import train

    dataset = load_dataset(args.data, args.data_dir)
    _, record = train(args.arch, dataset, epochs=args.epochs, seed=args.seed, lr=args.lr, out_dir=args.out,
                      max_batches=args.max_batches, shift=args.shift)
    print(f"{args.arch} on {dataset.name}: test accuracy {record['test_accuracy']:.4f} "
          f"(train {record['train_accuracy']:.4f}); wrote {args.out}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from .table import MODELS, build_table

    models = [m for m in MODELS if not args.models or m[1] in args.models]
    table = build_table(args.output, models=models, variants=args.variants, engines=args.engines,
                        n_test=args.n_test, build_root=args.build_dir)
    print(table.to_string(index=False))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import lenet_figures

    for path in lenet_figures(args.output, sample=args.sample, brian=not args.no_brian):
        print(f"wrote {path}")
    return 0


@contextlib.contextmanager
def _log_levels(levels: dict[str, int]) -> Iterator[None]:
    """Set loggers' levels for a block, then restore them (``main`` may be called in a user's process)."""
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    before = {logger: logger.level for logger in loggers}
    try:
        for logger, level in loggers.items():
            logger.setLevel(level)
        yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .study import REFERENCE_KINDS, Study, run_study, write_report

    study = Study.from_toml(args.study) if args.study else Study()
    for name in ("models", "variants", "engines", "trials", "samples", "brian_samples", "shard", "dt"):
        value = getattr(args, name)
        if value is not None:
            setattr(study, name, value)
    if args.kinds:
        study.kinds = {kind: dict(study.kinds.get(kind, REFERENCE_KINDS.get(kind, {"levels": []})))
                       for kind in args.kinds}
    if args.levels:
        for spec in study.kinds.values():
            spec["levels"] = args.levels
    if args.find_breaking_point is not None:
        study.breaking_points = args.find_breaking_point or ["analytic"]
        study.check()
    args.output.mkdir(parents=True, exist_ok=True)
    # the cells to run and the dashboard's address, without -v; Dask logs every worker's start and close at INFO
    with _log_levels({"ttfs_brian.study": logging.INFO, **({} if args.verbose else {"distributed": logging.WARNING})}):
        rows = run_study(study, args.output / "rows.csv", scheduler=args.scheduler, workers=args.workers)
    if not args.no_report:
        command = shlex.join(["ttfs-brian", *args.argv])
        print(f"wrote {write_report(rows, args.output, commands=[command], searched=study.breaking_points)}")
    print(f"{len(rows)} cells in {args.output / 'rows.csv'}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .brian import Simulator
    from .network import load

    net = load(args.network)
    sim = Simulator(net, device=args.device, timing=args.timing, dt=args.dt, build_dir=args.build_dir,
                    compute_capability=args.compute_capability)
    sim.build(args.batch)
    print(f"built {args.device} ({args.timing}, dt={args.dt} ms) for {sim.samples_per_run} samples in {sim.build_dir}: "
          f"{sim.synapses_per_sample} synapses per sample, compile {sim.compile_s:.1f} s")
    return 0


def _brian_options(args: argparse.Namespace) -> dict:
    if args.backend != "brian2":
        if args.dt is not None or args.device != "runtime" or args.timing != "precise":
            log.warning("--dt, --device and --timing apply to --backend brian2; the analytic engine computes exact "
                        "spike times in continuous time and ignores them")
        return {}
    return {"device": args.device, "timing": args.timing, "dt": args.dt}


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["analytic", "brian2"], default="analytic",
                        help="analytic: closed-form spike times; brian2: Brian2 simulation")
    parser.add_argument("--device", default="runtime", choices=["runtime", "cpp_standalone", "cuda_standalone"],
                        help="Brian2 device (--backend brian2)")
    parser.add_argument("--timing", default="precise", choices=["precise", "grid"],
                        help="Brian2 spike timing: precise (exact off-grid times) or grid (--backend brian2)")
    parser.add_argument("--dt", type=float, default=None,
                        help="Brian2 time step in ms (--backend brian2; default: the network's dt, else 0.01)")


def _subparser(sub, name: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES,
                          formatter_class=_Formatter, **kwargs)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, and the exit codes kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # A help text that states its default already, or a default of None, says more than "(default: None)".
        if action.default is None or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttfs-brian", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = "the ReLU network: a torch.save'd module file, or zoo:ARCH_DATASET (e.g. zoo:lenet5_mnist5k)"

    p = _subparser(sub, "convert", "convert a ReLU network into a TTFS network file")
    p.add_argument("model", help=model_help)
    p.add_argument("calibration", help=".npy calibration inputs (N, ...): the windows and input bounds come from them")
    p.add_argument("-o", "--output", required=True, help="network file to write (.npz)")
    p.add_argument("--variant", choices=["exact", "sparse"], default="exact",
                   help="exact: the paper's neuron, every neuron spikes once; sparse: zero is silence")
    p.add_argument("--zeta", type=float, default=0.5, help="window margin: B = (1 + zeta) * max activation")
    p.add_argument("--tau-c", type=float, default=1.0, help="coding time constant in ms")
    p.add_argument("--dt", type=float, default=None, help="align window boundaries to multiples of dt (ms)")
    p.add_argument("--input-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="input bounds mapped onto [0, 1] (default: min and max of the calibration data)")
    p.set_defaults(func=cmd_convert)

    p = _subparser(sub, "verify", "compare a converted network with the ReLU network on data, spike by spike")
    p.add_argument("network", help="converted network file (.npz from `ttfs-brian convert`)")
    p.add_argument("model", help=model_help + "; the one the network was converted from")
    p.add_argument("data", help=".npy inputs (N, ...) to compare on")
    p.add_argument("--tolerance", type=float, default=1e-9,
                   help="largest unflagged error accepted, relative to the layer window (beyond a grid result's bound)")
    p.add_argument("--max-flagged", type=int, default=0,
                   help="most flagged samples (clipped inputs or activations, early firing, uncertain grid "
                        "predictions) a passing verification may have")
    _add_backend(p)
    p.set_defaults(func=cmd_verify)

    p = _subparser(sub, "simulate", "run a converted network and print the per-layer report")
    p.add_argument("network", help="converted network file (.npz from `ttfs-brian convert`)")
    p.add_argument("data", help=".npy inputs (N, ...)")
    p.add_argument("-o", "--output", help="write the logits to this .npy file")
    _add_backend(p)
    p.set_defaults(func=cmd_simulate)

    p = _subparser(sub, "build", "generate and compile a Brian2 standalone project without running it (e.g. "
                                 "cuda_standalone on a machine without a GPU)")
    p.add_argument("network", help="converted network file (.npz from `ttfs-brian convert`)")
    p.add_argument("--device", default="cuda_standalone", choices=["cpp_standalone", "cuda_standalone"],
                   help="Brian2 standalone device")
    p.add_argument("--timing", default="precise", choices=["precise", "grid"], help="Brian2 spike timing")
    p.add_argument("--dt", type=float, default=0.01, help="Brian2 time step in ms")
    p.add_argument("--batch", type=int, default=1, help="samples simulated side by side")
    p.add_argument("--build-dir", required=True, help="folder of the generated project")
    p.add_argument("--compute-capability", type=float, help="GPU architecture when no GPU is visible (e.g. 9.0)")
    p.set_defaults(func=cmd_build)

    p = _subparser(sub, "train", "train a zoo architecture on an offline dataset (deterministic)")
    p.add_argument("arch", help="architecture: fc2, lenet5, vgg_small, resnet8 or digits_net")
    p.add_argument("--data", default="mnist5k", help="mnist5k (4,000/1,000 split), digits, or cifar10 (--data-dir)")
    p.add_argument("--data-dir", help="local copy of CIFAR-10 (never downloaded)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (cosine schedule)")
    p.add_argument("--max-batches", type=int, help="cut every epoch short (quick checks)")
    p.add_argument("--shift", type=int, default=0, help="augment with random translations of up to SHIFT pixels")
    p.add_argument("--out", default="models", help="folder for the checkpoint and its JSON record")
    p.set_defaults(func=cmd_train)

    p = _subparser(sub, "table", "build the conversion table (resumes: rows measured with the same parameters are "
                                 "kept, damaged rows recomputed)")
    p.add_argument("-o", "--output", type=Path, default=Path("results/conversion_table.csv"), help="CSV to extend")
    p.add_argument("--models", nargs="*", help="architectures to include (default: all bundled)")
    p.add_argument("--variants", nargs="*", default=["exact", "sparse"], help="variants to include")
    p.add_argument("--engines", nargs="*", default=["analytic", "precise", "grid"],
                   help="analytic; precise / grid: Brian2 cpp_standalone")
    p.add_argument("--n-test", type=int, help="limit the test samples (default: the whole test split)")
    p.add_argument("--build-dir", type=Path, help="keep the Brian2 standalone projects here")
    p.set_defaults(func=cmd_table)

    p = _subparser(sub, "sweep", "run a robustness study on Dask (resumable: cells already in the output are kept)")
    p.add_argument("study", nargs="?", help="TOML file describing the study, [models.NAME] tables for your own "
                                            "networks (default: SPEC's reference grid on LeNet-5)")
    p.add_argument("-o", "--output", type=Path, default=Path("results/robustness"),
                   help="folder for rows.csv, summary.csv, the figures and README.md")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://HOST:PORT); default: a local cluster")
    p.add_argument("--workers", type=int, default=2, help="workers of the local cluster (one thread each)")
    p.add_argument("--models", nargs="*", help="ARCH_DATASET names (e.g. lenet5_mnist5k)")
    p.add_argument("--variants", nargs="*", help="exact and/or sparse")
    p.add_argument("--engines", nargs="*", help="analytic and/or brian2 (cpp_standalone, precise timing)")
    p.add_argument("--kinds", nargs="*", help="perturbation kinds, or zeta (default: the reference grid)")
    p.add_argument("--levels", type=float, nargs="*", help="levels for every kind (default: each kind's reference levels)")
    p.add_argument("--trials", type=int, help="seeds per level")
    p.add_argument("--samples", type=int, help="test samples for the analytic engine (default: the whole split)")
    p.add_argument("--brian-samples", type=int, help="test samples for Brian2")
    p.add_argument("--shard", type=int, help="test samples per cell")
    p.add_argument("--dt", type=float, help="Brian2 time step and window alignment (ms)")
    p.add_argument("--find-breaking-point", nargs="*", metavar="ENGINE",
                   help="after the grid, search per model, variant and kind the level that loses 1 %% accuracy and "
                        "the one at half the chance-corrected accuracy, each to a factor 1.25 (engines: default "
                        "analytic; TOML: [study] breaking_points = [\"analytic\"])")
    p.add_argument("--no-report", action="store_true", help="rows only: no summary, figures or README")
    p.set_defaults(func=cmd_sweep)

    p = _subparser(sub, "plot", "figures of one test digit travelling through the bundled LeNet-5")
    p.add_argument("-o", "--output", type=Path, default=Path("results/figures"), help="folder for the figures")
    p.add_argument("--sample", type=int, default=0, help="index of the test digit")
    p.add_argument("--no-brian", action="store_true", help="analytic spike times only (no Brian2 traces)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (TTFSBrianError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
