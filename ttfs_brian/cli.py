"""The ``ttfs-brian`` command line.

Models are given as a file written by ``torch.save(model, PATH)`` (a whole pickled module; its
class must be importable) or as ``zoo:ARCH_DATASET`` for a bundled checkpoint, e.g.
``zoo:lenet5_mnist5k``. Data files are ``.npy`` arrays of shape ``(N, ...)``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

TOLERANCE = 1e-9
"""Largest unflagged error (relative to the layer window, and of the logits) that `verify` accepts."""


def load_model(spec: str):
    """A torch module from ``zoo:ARCH_DATASET`` or a ``torch.save``'d module file."""
    import torch

    from . import zoo

    if spec.startswith("zoo:"):
        arch, _, dataset = spec[4:].rpartition("_")
        if not arch:
            raise SystemExit(f"error: {spec!r}: use zoo:ARCH_DATASET, e.g. zoo:lenet5_mnist5k")
        return zoo.load_pretrained(arch, dataset)[0]
    path = Path(spec)
    if not path.exists():
        raise SystemExit(f"error: model file {path} does not exist")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SystemExit(f"error: cannot load {path} as a pickled torch module ({exc}); save it with "
                         "torch.save(model, path) where the model's class is importable") from exc
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"error: {path} holds a {type(model).__name__}, not a torch.nn.Module (a state_dict? "
                         "save the whole module with torch.save(model, path))")
    return model.eval()


def load_array(path: str) -> np.ndarray:
    if not Path(path).exists():
        raise SystemExit(f"error: data file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise SystemExit(f"error: {path} is not a .npy array ({exc})") from exc


def cmd_convert(args: argparse.Namespace) -> int:
    from .converter import convert

    model = load_model(args.model)
    calibration = load_array(args.calibration)
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
    worst = max([report.logit_max_rel_err_unflagged, *report.layers["max_rel_err_unflagged"]])
    if worst > TOLERANCE:
        print(f"FAILED: unflagged error {worst:.3g} exceeds {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from . import simulate
    from .network import load

    net = load(args.network)
    result = simulate(net, load_array(args.data), backend=args.backend, **_brian_options(args))
    print(result.report.to_string(index=False))
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
        return {}
    return {"device": args.device, "timing": args.timing, "dt": args.dt}


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["analytic", "brian2"], default="analytic")
    parser.add_argument("--device", default="runtime", choices=["runtime", "cpp_standalone", "cuda_standalone"],
                        help="Brian2 device (backend brian2)")
    parser.add_argument("--timing", default="precise", choices=["precise", "grid"], help="Brian2 spike timing")
    parser.add_argument("--dt", type=float, default=0.01, help="Brian2 time step in ms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttfs-brian", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a ReLU network into a TTFS network file")
    p.add_argument("model", help="torch.save'd module file, or zoo:ARCH_DATASET")
    p.add_argument("calibration", help=".npy calibration inputs (N, ...): windows come from them")
    p.add_argument("-o", "--output", required=True, help="network file to write (.npz)")
    p.add_argument("--variant", choices=["exact", "sparse"], default="exact")
    p.add_argument("--zeta", type=float, default=0.5, help="window margin: B = (1 + zeta) * max activation")
    p.add_argument("--tau-c", type=float, default=1.0, help="coding time constant in ms")
    p.add_argument("--dt", type=float, default=None, help="align window boundaries to multiples of dt (ms)")
    p.add_argument("--input-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="input bounds mapped onto [0, 1] (default: min and max of the calibration data)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("verify", help="compare a converted network with the ReLU network on data")
    p.add_argument("network")
    p.add_argument("model")
    p.add_argument("data")
    _add_backend(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("simulate", help="run a converted network and print the per-layer report")
    p.add_argument("network")
    p.add_argument("data")
    p.add_argument("-o", "--output", help="write the logits to this .npy file")
    _add_backend(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("build", help="generate and compile a Brian2 standalone project without running it "
                                      "(e.g. cuda_standalone on a machine without a GPU)")
    p.add_argument("network")
    p.add_argument("--device", default="cuda_standalone", choices=["cpp_standalone", "cuda_standalone"])
    p.add_argument("--timing", default="precise", choices=["precise", "grid"])
    p.add_argument("--dt", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=1, help="samples simulated side by side")
    p.add_argument("--build-dir", required=True, help="folder of the generated project")
    p.add_argument("--compute-capability", type=float, help="GPU architecture when no GPU is visible (e.g. 9.0)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train a zoo architecture on an offline dataset (deterministic)")
    p.add_argument("arch", help="fc2, lenet5, vgg_small or digits_net")
    p.add_argument("--data", default="mnist5k", help="mnist5k (4,000/1,000 split), digits, or cifar10 (--data-dir)")
    p.add_argument("--data-dir", help="local copy of CIFAR-10 (never downloaded)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-batches", type=int, help="cut every epoch short (quick checks)")
    p.add_argument("--shift", type=int, default=0, help="augment with random translations of up to SHIFT pixels")
    p.add_argument("--out", default="models", help="folder for the checkpoint and its JSON record")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("table", help="build the conversion table (resumes: rows already in the CSV are kept)")
    p.add_argument("-o", "--output", type=Path, default=Path("results/conversion_table.csv"))
    p.add_argument("--models", nargs="*", help="architectures to include (default: all bundled)")
    p.add_argument("--variants", nargs="*", default=["exact", "sparse"])
    p.add_argument("--engines", nargs="*", default=["analytic", "precise", "grid"],
                   help="analytic; precise / grid: Brian2 cpp_standalone")
    p.add_argument("--n-test", type=int, help="limit the test samples (default: the whole test split)")
    p.add_argument("--build-dir", type=Path, help="keep the Brian2 standalone projects here")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("plot", help="figures of one test digit travelling through the bundled LeNet-5")
    p.add_argument("-o", "--output", type=Path, default=Path("results/figures"))
    p.add_argument("--sample", type=int, default=0, help="index of the test digit")
    p.add_argument("--no-brian", action="store_true", help="analytic spike times only (no Brian2 traces)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
