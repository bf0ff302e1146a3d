"""Brian2 on LeNet-5: runtime and cpp_standalone, precise and grid timing, against the analytic engine.

For each configuration: build (network construction), compile (standalone code generation and C++
compilation), run time, per-image time (amortized, compilation included), spikes and synaptic
events per image, and the ratio to the analytic engine's per-image time measured in the same run.
Spike times are compared with the analytic engine (max |dt|, spikes only in one of them, prediction
agreement). Rows are appended to ``results/bench_brian2.csv`` as they finish (reruns skip done rows).

cpp_standalone is measured with a cold compiled-network cache (an empty cache folder: everything is
compiled) and warm (the same structure built again by a new simulator: the objects come from the cache), in
both round layouts, side by side: ``aligned`` (every layer works through each sample's whole latency) and
``pipelined`` (the layers work on successive samples at once, :class:`ttfs_brian.brian.layout.RoundTiming`).
``run_per_image_ms`` is the marginal cost (the binary's run over all images, without build and compilation).

    python experiments/bench_brian2.py [--images 1000] [--runtime-images 100] [--batch-size R]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import brian2  # noqa: F401  (imported once per process, ~2 s with pylab: not part of a simulator's cost)
import pandas as pd

import ttfs_brian
from ttfs_brian import data, zoo
from ttfs_brian.analytic import simulate_analytic
from ttfs_brian.brian import Simulator
from ttfs_brian.cost import synaptic_events

log = logging.getLogger("bench_brian2")
RESULTS = Path(__file__).resolve().parent.parent / "results"
KEY = ["variant", "device", "timing", "dt", "images", "batch_size", "cache", "threads", "layout"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="test images for cpp_standalone")
    parser.add_argument("--runtime-images", type=int, default=100, help="test images for the runtime device (0: skip)")
    parser.add_argument("--variants", nargs="*", default=["exact", "sparse"])
    parser.add_argument("--precise-dt", type=float, nargs="+", default=[1.0, 0.2],
                        help="precise timing is exact at any dt once the windows are dt-aligned (converted with dt)")
    parser.add_argument("--grid-dt", type=float, nargs="*", default=[0.05])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="replicas R side by side (default: the Simulator's choice); rounds K = images / R")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OpenMP threads (cpp_standalone)")
    parser.add_argument("--layouts", nargs="+", default=["aligned", "pipelined"], choices=["aligned", "pipelined"])
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_brian2.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    model, _ = zoo.load_pretrained("lenet5", "mnist5k")
    mnist = data.mnist5k()
    done = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame(columns=KEY)
    if "layout" not in done:  # rows from before pipelining: every round was aligned
        done["layout"] = "aligned"
    seen = {tuple(str(v) for v in row) for row in done[KEY].itertuples(index=False)}
    batch = "default" if args.batch_size is None else str(args.batch_size)
    configs = [(variant, device, timing, dt, n, cache, layout)
               for variant in args.variants
               for device, n in (("cpp_standalone", args.images), ("runtime", args.runtime_images)) if n > 0
               for timing, dts in (("precise", args.precise_dt), ("grid", args.grid_dt)) for dt in dts
               for layout in (args.layouts if device == "cpp_standalone" else ("aligned",))
               for cache in (("cold", "warm") if device == "cpp_standalone" else ("none",))]
    cache_root = Path(tempfile.mkdtemp(prefix="bench_brian2_cache_"))
    for variant, device, timing, dt, n, cache, layout in configs:
        threads = args.threads if device == "cpp_standalone" else 1
        if (variant, device, timing, str(dt), str(n), batch, cache, str(threads), layout) in seen:
            log.info("skipping %s %s %s dt=%s cache %s %s (done)", variant, device, timing, dt, cache, layout)
            continue
        # cold: a folder of its own, empty; warm: the folder its cold twin filled (built again if skipped)
        os.environ["TTFS_BRIAN_CACHE"] = str(cache_root / f"{variant}_{timing}_{dt}_{layout}")
        x = mnist.x_test[:n]
        net = ttfs_brian.convert(model, mnist.x_train, variant=variant, dt=dt)
        start = time.perf_counter()
        reference = simulate_analytic(net, x)
        analytic_s = time.perf_counter() - start
        start = time.perf_counter()
        sim = Simulator(net, device=device, timing=timing, dt=dt, batch_size=args.batch_size,
                        threads=args.threads if device == "cpp_standalone" else None,
                        pipeline=layout == "pipelined" if device == "cpp_standalone" else None)
        result = sim.run(x)
        total_s = time.perf_counter() - start
        diff = ttfs_brian.compare(reference, result)
        layers = diff[diff["layer"] != "logits"]
        report = result.report[result.report["kind"] != "input"]
        row = {
            "variant": variant, "device": device, "timing": timing, "dt": dt, "images": n, "batch_size": batch,
            "cache": cache,
            "threads": threads, "layout": "pipelined" if sim.round_timing.pipelined else "aligned",
            "period_ms": sim.round_timing.period_ms,
            "replicas": result.meta.get("replicas"), "rounds": result.meta.get("rounds"), "n_synapses": result.meta.get("n_synapses"),
            "build_s": result.meta["build_s"], "compile_s": result.meta["compile_s"], "run_s": result.meta["run_s"],
            "total_s": total_s, "per_image_ms": 1e3 * total_s / n, "run_per_image_ms": 1e3 * result.meta["run_s"] / n,
            "analytic_per_image_ms": 1e3 * analytic_s / n, "ratio_to_analytic": total_s / analytic_s,
            "spikes_per_image": float(report["spikes"].sum() / n),
            "synaptic_events_per_image": synaptic_events(net, result) / n,
            "max_abs_dt_ms": float(layers["max_abs_dt_ms"].max()),
            "spikes_only_brian2": int(layers["spikes_only_b"].sum()),
            "spikes_only_analytic": int(layers["spikes_only_a"].sum()),
            "logit_max_rel_err": float(diff["logit_max_rel_err"].iloc[-1]),
            "agreement_with_analytic": diff.attrs["agreement"],
        }
        log.info("%s", row)
        rows = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame()
        pd.concat([rows, pd.DataFrame([row])], ignore_index=True).to_csv(args.out, index=False)  # new columns too
    shutil.rmtree(cache_root, ignore_errors=True)
    log.info("wrote %s\n%s", args.out, pd.read_csv(args.out).to_string(index=False))


if __name__ == "__main__":
    main()
