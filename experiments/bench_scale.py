"""Brian2 at scale: VGG-small, ResNet-8 and VGG-16 in cpp_standalone, precise timing, one sample at a time (R = 1).

Per model: synapses, peak memory (RSS) of this Python process and of the compiled binary (GNU time),
build, compile and run time, per-image time, and the worst spike-time difference against the analytic
engine on the same images (must stay within 1e-9 ms). Each model runs in its own process, so that the
Python peak is that model's. Rows go to ``results/bench_scale.csv`` as they are measured.

    python experiments/bench_scale.py [--models vgg_small_mnist5k resnet8_mnist5k vgg16_mnist5k32] [--images 20]
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"
COLUMNS = ["model", "variant", "dt", "images", "neurons", "synapses", "python_peak_gib", "binary_peak_gib",
           "binary_bytes_per_synapse", "build_s", "compile_s", "run_s", "per_image_s", "max_abs_dt_ms",
           "agreement", "analytic_per_image_s"]
KEY = ["model", "variant", "dt", "images"]


def measure(model: str, variant: str, dt: float, images: int) -> dict:
    """One model in this process (called in a child process by :func:`main`)."""
    import brian2 as b2

    import ttfs_brian
    from ttfs_brian import data, zoo
    from ttfs_brian.brian import Simulator
    from ttfs_brian.study import split_model

    arch, dataset = split_model(model)
    torch_model, _ = zoo.load_pretrained(arch, dataset)
    ds = data.load_dataset(dataset)
    net = ttfs_brian.convert(torch_model, ds.x_train[:2000], variant=variant, dt=dt)
    x = ds.x_test[:images]
    started = time.perf_counter()
    reference = ttfs_brian.simulate(net, x)
    analytic_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        rss_file = Path(folder) / "binary_rss_kib"
        b2.prefs.devices.cpp_standalone.run_cmd_unix = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), "./main"]
        started = time.perf_counter()
        sim = Simulator(net, device="cpp_standalone", dt=dt, batch_size=1, threads=2, build_dir=Path(folder) / "b")
        result = sim.run(x)
        total = time.perf_counter() - started
        binary_kib = float(rss_file.read_text().split()[-1])
    table = ttfs_brian.compare(reference, result)
    python_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model, "variant": variant, "dt": dt, "images": images, "neurons": sim.neurons_per_sample,
            "synapses": sim.synapses_per_sample, "python_peak_gib": python_kib / 2**20,
            "binary_peak_gib": binary_kib / 2**20, "binary_bytes_per_synapse": binary_kib * 1024 / sim.synapses_per_sample,
            "build_s": result.meta["build_s"], "compile_s": result.meta["compile_s"], "run_s": result.meta["run_s"],
            "per_image_s": total / images, "max_abs_dt_ms": float(table["max_abs_dt_ms"].iloc[:-1].max()),
            "agreement": table.attrs["agreement"], "analytic_per_image_s": analytic_s / images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["vgg_small_mnist5k", "resnet8_mnist5k", "vgg16_mnist5k32"])
    parser.add_argument("--variants", nargs="*", default=["exact"])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--dt", type=float, default=1.0, help="precise timing is exact at any dt the windows align to")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_scale.csv")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ttfs_brian.store import RowStore

    store = RowStore(args.out, COLUMNS, KEY)
    for model in args.models:
        for variant in args.variants:
            key = {"model": model, "variant": variant, "dt": args.dt, "images": args.images}
            if store.has(key):
                continue
            child = subprocess.run([sys.executable, __file__, "--child", json.dumps([model, variant, args.dt,
                                                                                     args.images])],
                                   capture_output=True, text=True)
            if child.returncode != 0:
                logging.error("%s %s failed:\n%s", model, variant, child.stderr[-4000:])
                continue
            row = json.loads(child.stdout.strip().splitlines()[-1])
            logging.info("%s", row)
            store.append(row)
    logging.info("wrote %s\n%s", args.out, store.read().to_string(index=False))


if __name__ == "__main__":
    main()
