"""cuda_standalone on a GPU machine that has no network and takes a small carry: build here, run there, read here.

Three steps, one command each:

    python experiments/bench_cuda.py prepare [--models lenet5_mnist5k] [--variants exact sparse] [--images 200]
    # on the GPU machine, from the repository root (the device tool carries .cuda_bench/carry):
    bash .cuda_bench/carry/run.sh "$OUT"
    python experiments/bench_cuda.py read --fetched DIR      # DIR: the folder the GPU machine's files came back to

``prepare`` converts each network (this environment), computes the analytic engine's spike times of the first
``--images`` test digits, and, in the Python 3.12 environment of ``make cuda-env``, builds the cuda_standalone
project with nvcc for ``--compute-capability`` (no GPU needed) and records the run of the binary: Brian2 starts a
standalone binary through ``prefs.devices.cpp_standalone.run_cmd_unix``, which points at this script's ``relay``, so
the binary itself never runs here. The relay copies the binary, its static arrays (synapses, and the inputs that
``run_args`` wrote) and its command line into ``.cuda_bench/carry/<tag>.tar.xz``. ``run.sh`` runs each binary there
``--repeats`` times (the binary times its own simulation loop; the wall time includes loading the arrays and
writing the results) and packs its result files. ``read`` builds the same simulator again (same code: nvcc does
nothing), and this time the relay hands Brian2 the result files that came back, checking first that the command
line (the inputs, whose files are named by their MD5) is the one recorded. The spike times are then compared
with the analytic engine's. One row per network and variant goes to ``results/bench_cuda.csv``.

The carry and the files that come back are small: ``--images`` and the replicas bound them (the exact variant
records ~6,500 spikes of 20 bytes per LeNet-5 image; every replica holds the network's synapses).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cuda_bench"
PY312 = ROOT / ".venv312" / "bin" / "python"
RESULTS = ROOT / "results"
log = logging.getLogger("bench_cuda")

RUN_SH = r"""#!/bin/bash
# Runs every cuda_standalone binary recorded by `bench_cuda.py prepare` on this machine's GPU.
# Writes <tag>.results.tar.xz.part* (the result files of the last run, wall_s, stdout) and gpu.txt into $1.
set -uo pipefail
out=${1:?usage: run.sh OUT_FOLDER}
here=$(cd "$(dirname "$0")" && pwd)
repeats=${REPEATS:-%(repeats)d}
# cuRAND: the binary was linked here against libcurand.so.10; take the GPU machine's own copy
lib=$(ldconfig -p 2>/dev/null | awk '/libcurand\.so\.10/ {print $NF; exit}')
[ -n "$lib" ] || lib=$(find /usr/local /opt /usr/lib -name 'libcurand.so.10*' 2>/dev/null | head -n1)
[ -n "$lib" ] && export LD_LIBRARY_PATH=$(dirname "$lib"):${LD_LIBRARY_PATH:-}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  echo "curand: $lib"; grep -m1 "model name" /proc/cpuinfo; nproc; } > "$out/gpu.txt" 2>&1
for tag in $(cat "$here/tags"); do
  rm -rf "/tmp/ttfs_cuda/$tag"; mkdir -p "/tmp/ttfs_cuda/$tag"
  tar xJf "$here/$tag.tar.xz" -C "/tmp/ttfs_cuda/$tag" || continue
  cd "/tmp/ttfs_cuda/$tag"
  ldd ./main | grep 'not found' >> "$out/gpu.txt"
  rm -rf results; mkdir results
  for rep in $(seq "$repeats"); do
    start=$(date +%%s.%%N)
    ./main --results_dir "$PWD/results/" $(cat args) > results/stdout.txt 2>&1
    code=$?
    end=$(date +%%s.%%N)
    echo "$rep $code $start $end $(cat results/last_run_info.txt 2>/dev/null)" >> results/wall_s
    [ $code -eq 0 ] || { echo "$tag: exit $code"; tail -n 20 results/stdout.txt; break; }
  done
  # at most 16 MiB a file comes back: parts of 15 MiB
  tar cJf - results | split -b 15m -d - "$out/$tag.results.tar.xz.part"
  echo "$tag: $(cat results/wall_s | tail -n 1)"
done
"""


def carry_of(folder: Path) -> Path:
    """Where the relay records the run of the network in ``folder`` (``<work>/carry/<tag>``)."""
    return folder.parent / "carry" / folder.name


def fetched_of(folder: Path) -> Path:
    """The result files that came back for the network in ``folder``."""
    return folder / "fetched" / "results"


# ---------------------------------------------------------------- the Brian2 side (Python 3.12 for brian2cuda)
def relay(folder: Path, argv: list[str]) -> int:
    """Stands in for the binary (Brian2 runs it in the project folder with ``--results_dir DIR`` and ``run_args``).

    Recording (nothing came back yet): copy the binary, the static arrays and the command line into the carry, and
    fail, so that Brian2 reads no results. Replaying: check the command line, then put the results in DIR."""
    results_dir = Path(argv[argv.index("--results_dir") + 1])
    args = [a for i, a in enumerate(argv) if a != "--results_dir" and (i == 0 or argv[i - 1] != "--results_dir")]
    carry, fetched = carry_of(folder), fetched_of(folder)
    if fetched.exists():
        recorded = (carry / "args").read_text().split()
        if recorded != args:
            print(f"relay: this run's command line differs from the recorded one ({folder.name}); "
                  "run prepare and the GPU step again", file=sys.stderr)
            return 2
        for item in fetched.iterdir():
            shutil.copy2(item, results_dir / item.name)
        return 0
    if carry.exists():
        shutil.rmtree(carry)
    carry.mkdir(parents=True)
    (carry / "args").write_text(" ".join(args) + "\n")
    # xz: the replicas repeat the same weights and the indices are regular (LeNet-5, R = 4: 27 MiB -> a few)
    with tarfile.open(carry.with_name(f"{folder.name}.tar.xz"), "w:xz") as tar:
        tar.add("main")
        tar.add("static_arrays")
        tar.add(carry / "args", arcname="args")
    print(f"relay: recorded the run in {carry}.tar.xz", file=sys.stderr)
    return 3


def simulate(folder: Path, mode: str) -> None:
    """Build the cuda_standalone simulator of ``folder`` and run it through the relay (``record`` or ``replay``)."""
    import brian2 as b2

    from ttfs_brian.brian import Simulator
    from ttfs_brian.network import load

    config = json.loads((folder / "config.json").read_text())
    net = load(folder / "net.npz")
    x = np.load(folder / "x.npy")
    replicas = min(config["replicas"], len(x))
    cuda = config["device"] == "cuda_standalone"
    sim = Simulator(net, device=config["device"], timing="precise", dt=config["dt"], build_dir=folder / "project",
                    compute_capability=config["compute_capability"] if cuda else None,
                    batch_size=replicas, rounds=math.ceil(len(x) / replicas))
    b2.prefs.devices.cpp_standalone.run_cmd_unix = [sys.executable, str(Path(__file__).resolve()), "relay",
                                                    str(folder)]
    try:
        result = sim.run(x)
    except RuntimeError:
        if mode == "record" and (carry_of(folder) / "args").exists():
            build = {"build_s": sim.build_s, "compile_s": sim.compile_s, "replicas": sim.replicas,
                     "rounds": sim.rounds, "period_ms": sim.period_ms(), "pipelined": sim.round_timing.pipelined,
                     "synapses_per_sample": sim.synapses_per_sample,
                     "code_objects": len(list((folder / "project" / "code_objects").glob("*.c[up]*")))}
            (folder / "build.json").write_text(json.dumps(build, indent=1))
            return
        raise
    if mode != "replay":
        raise RuntimeError("the binary ran here: the relay was not used")
    names = list(result.report["layer"])
    np.savez(folder / "brian2.npz", logits=result.logits, flagged=result.flagged,
             **{f"t/{name}": result.spike_times[name] for name in names})
    (folder / "brian2.json").write_text(json.dumps({"layers": names}))


# ---------------------------------------------------------------- orchestration (this environment, with torch)
def in_brian_env(folder: Path, mode: str) -> None:
    """The Brian2 step of ``folder`` in its own process: brian2cuda's Python 3.12 environment for cuda_standalone,
    this one for cpp_standalone."""
    cuda = json.loads((folder / "config.json").read_text())["device"] == "cuda_standalone"
    command = [str(PY312) if cuda else sys.executable, str(Path(__file__).resolve()), "_simulate", str(folder), mode]
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{folder.name}: the Brian2 step ({mode}) failed (exit {done.returncode}); see above")


def networks(args: argparse.Namespace):
    """(name, variant, network, inputs, labels or None) of every network to prepare: the bundled models converted
    here, or networks converted and saved before (``--nets NET.npz --inputs X.npy``)."""
    import ttfs_brian
    from ttfs_brian import data, zoo
    from ttfs_brian.network import load
    from ttfs_brian.study import split_model

    if args.nets:
        x = np.load(args.inputs)[:args.images]
        for path in args.nets:
            net = load(path)
            yield path.stem, net.variant, net, x, None
        return
    for model in args.models:
        arch, dataset = split_model(model)
        torch_model, _ = zoo.load_pretrained(arch, dataset)
        split = data.load_dataset(dataset)
        for variant in args.variants:
            net = ttfs_brian.convert(torch_model, split.x_train[:2000], variant=variant, dt=args.dt)
            yield model, variant, net, split.x_test[:args.images], split.y_test[:args.images]


def prepare(args: argparse.Namespace) -> None:
    from ttfs_brian.analytic import simulate_analytic

    if args.device == "cuda_standalone" and (not PY312.exists() or shutil.which("nvcc") is None):
        raise SystemExit("cuda_standalone needs the Python 3.12 environment of `make cuda-env` and nvcc on PATH")
    if args.nets and args.inputs is None:
        raise SystemExit("--nets needs --inputs X.npy (the samples to run)")
    carry = args.work / "carry"
    tags = []
    for name, variant, net, x, labels in networks(args):
        tag = f"{name}_{variant}"
        folder = args.work / tag
        folder.mkdir(parents=True, exist_ok=True)
        net.save(folder / "net.npz")
        np.save(folder / "x.npy", x)
        started = time.perf_counter()
        reference = simulate_analytic(net, x)
        analytic_s = time.perf_counter() - started
        np.savez(folder / "analytic.npz", logits=reference.logits,
                 **{f"t/{layer}": reference.spike_times[layer] for layer in reference.report["layer"]})
        config = {"model": name, "variant": variant, "device": args.device, "dt": args.dt if net.dt is None else
                  net.dt, "images": len(x), "replicas": args.replicas, "compute_capability": args.compute_capability,
                  "analytic_s": analytic_s, "labels": None if labels is None else np.asarray(labels).tolist()}
        (folder / "config.json").write_text(json.dumps(config))
        shutil.rmtree(folder / "fetched", ignore_errors=True)
        log.info("%s: building %s and recording the run", tag, args.device)
        in_brian_env(folder, "record")
        tags.append(tag)
        (carry / "tags").write_text("\n".join(tags) + "\n")  # each network can go as soon as it is built
        (carry / "run.sh").write_text(RUN_SH % {"repeats": args.repeats})
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file()) / 2**20
    log.info("carry %s: %.1f MiB; on the GPU machine run: bash %s/run.sh \"$OUT\"", carry, size,
             carry.relative_to(ROOT) if carry.is_relative_to(ROOT) else carry)


def read(args: argparse.Namespace) -> None:
    import pandas as pd

    import ttfs_brian
    from ttfs_brian.result import SimulationResult
    from ttfs_brian.store import RowStore

    gpu = (args.fetched / "gpu.txt").read_text().strip().splitlines()
    store = RowStore(args.out, COLUMNS, KEY)
    for tag in (args.work / "carry" / "tags").read_text().split():
        parts = sorted(args.fetched.glob(f"{tag}.results.tar.xz.part*"))
        if not parts:
            log.warning("%s: no results came back; skipped", tag)
            continue
        folder = args.work / tag
        shutil.rmtree(folder / "fetched", ignore_errors=True)
        archive = folder / "results.tar.xz"
        with open(archive, "wb") as joined:
            for part in parts:
                joined.write(part.read_bytes())
        with tarfile.open(archive) as tar:
            tar.extractall(folder / "fetched", filter="data")
        runs = [line.split() for line in (fetched_of(folder) / "wall_s").read_text().splitlines()]
        if any(run[1] != "0" for run in runs):
            raise RuntimeError(f"{tag}: the binary failed on the GPU machine:\n"
                               + (fetched_of(folder) / "stdout.txt").read_text()[-3000:])
        in_brian_env(folder, "replay")
        config = json.loads((folder / "config.json").read_text())
        build = json.loads((folder / "build.json").read_text())

        def result(name: str, layers: list[str]) -> SimulationResult:
            with np.load(folder / name) as f:
                return SimulationResult(f["logits"], {layer: f[f"t/{layer}"] for layer in layers},
                                        pd.DataFrame({"layer": layers}), {}, backend=name)

        layers = json.loads((folder / "brian2.json").read_text())["layers"]
        reference, brian = result("analytic.npz", layers), result("brian2.npz", layers)
        diff = ttfs_brian.compare(reference, brian)
        spikes = diff[diff["layer"] != "logits"]
        with np.load(folder / "brian2.npz") as f:
            flagged = int(f["flagged"].sum())
        n = config["images"]
        walls = [float(run[3]) - float(run[2]) for run in runs]
        loops = [float(run[4]) for run in runs if len(run) > 4]
        row = {"model": config["model"], "variant": config["variant"], "device": config["device"],
               "dt": config["dt"], "images": n,
               "replicas": build["replicas"], "rounds": build["rounds"], "layout":
               "pipelined" if build["pipelined"] else "aligned", "period_ms": build["period_ms"],
               "synapses_per_sample": build["synapses_per_sample"], "code_objects": build["code_objects"],
               "generate_s": build["build_s"], "compile_s": build["compile_s"], "repeats": len(runs),
               "run_per_image_ms": 1e3 * min(loops) / n if loops else float("nan"),
               "wall_per_image_ms": 1e3 * min(walls) / n, "wall_s_max": max(walls),
               "analytic_per_image_ms": 1e3 * config["analytic_s"] / n,
               "max_abs_dt_ms": float(spikes["max_abs_dt_ms"].max()),
               "spikes_only_brian2": int(spikes["spikes_only_b"].sum()),
               "spikes_only_analytic": int(spikes["spikes_only_a"].sum()),
               "logit_max_rel_err": float(diff["logit_max_rel_err"].iloc[-1]),
               "agreement_with_analytic": diff.attrs["agreement"],
               "accuracy": float("nan") if config["labels"] is None else
               float((brian.predictions == np.asarray(config["labels"])).mean()),
               "flagged_samples": flagged, "gpu": gpu[0] if gpu else "unknown",
               "cpu": next((line.split(":", 1)[1].strip() for line in gpu if line.startswith("model name")), "")}
        log.info("%s", row)
        if store.has(row):
            log.warning("%s: a row with this key is already in %s; not written (delete it to replace it)", tag,
                        args.out)
        else:
            store.append(row)
    log.info("wrote %s\n%s", args.out, store.read().to_string(index=False))


COLUMNS = ["model", "variant", "device", "dt", "images", "replicas", "rounds", "layout", "period_ms",
           "synapses_per_sample", "code_objects", "generate_s", "compile_s", "repeats", "run_per_image_ms",
           "wall_per_image_ms", "wall_s_max", "analytic_per_image_ms", "max_abs_dt_ms", "spikes_only_brian2",
           "spikes_only_analytic", "logit_max_rel_err", "agreement_with_analytic", "accuracy", "flagged_samples", "gpu", "cpu"]
KEY = ["model", "variant", "device", "dt", "images", "replicas", "gpu"]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "relay":
        raise SystemExit(relay(Path(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="convert, build with nvcc and record the runs (here)")
    p.add_argument("--models", nargs="+", default=["lenet5_mnist5k"])
    p.add_argument("--nets", nargs="+", type=Path, help="converted networks (NET.npz) instead of --models")
    p.add_argument("--inputs", type=Path, help="with --nets: the samples (X.npy, raw inputs)")
    p.add_argument("--variants", nargs="+", default=["exact", "sparse"], choices=["exact", "sparse"])
    p.add_argument("--images", type=int, default=200, help="test digits (their spikes come back: keep it small)")
    p.add_argument("--replicas", type=int, default=4, help="replicas R side by side (each holds all synapses)")
    p.add_argument("--dt", type=float, default=1.0, help="ms; precise timing is exact at any dt-aligned window")
    p.add_argument("--compute-capability", type=float, default=9.0)
    p.add_argument("--device", default="cuda_standalone", choices=["cuda_standalone", "cpp_standalone"],
                   help="cpp_standalone: the same record, run.sh and replay on this machine's CPU, to check the "
                        "pipeline where no GPU is lent")
    p.add_argument("--repeats", type=int, default=3, help="runs of each binary on the GPU machine")
    p.add_argument("--work", type=Path, default=WORK, help="where the projects and the carry go")
    p = sub.add_parser("read", help="replay the results that came back, compare, write the CSV (here)")
    p.add_argument("--fetched", type=Path, required=True, help="folder holding gpu.txt and the result parts")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_cuda.csv")
    p.add_argument("--work", type=Path, default=WORK, help="where the projects and the carry are")
    p = sub.add_parser("_simulate")
    p.add_argument("folder", type=Path)
    p.add_argument("mode", choices=["record", "replay"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "work", None) is not None:
        args.work = args.work.resolve()  # the relay runs in the project folder
    {"prepare": prepare, "read": read, "_simulate": lambda a: simulate(a.folder, a.mode)}[args.step](args)


if __name__ == "__main__":
    main()
