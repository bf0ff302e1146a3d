"""The main job, end to end, on bundled data and models (no download, no server).

Converts the bundled LeNet-5 (BatchNorm, max pooling; trained on 4,000 MNIST digits) into both TTFS
variants, runs the analytic engine on the 1,000 test digits, and checks every spike against the
float64 ReLU network. Writes the converted networks to ``output/``.

    make demo        # or: python experiments/demo.py
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

import ttfs_brian
from ttfs_brian import data, zoo

log = logging.getLogger("demo")
OUTPUT = Path(__file__).resolve().parent.parent / "output"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, record = zoo.load_pretrained("lenet5", "mnist5k")
    mnist = data.mnist5k()
    x, y = mnist.x_test[: args.n_test], mnist.y_test[: args.n_test]
    log.info("LeNet-5 (bundled, seed %d): ReLU test accuracy %.2f%% on %d digits", record["seed"],
             100 * record["test_accuracy"], record["n_test"])
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in ("exact", "sparse"):
        net = ttfs_brian.convert(model, mnist.x_train, variant=variant, dt=0.01)
        path = net.save(args.out / f"lenet5_mnist5k_{variant}.npz")
        res = ttfs_brian.simulate(net, x)
        check = ttfs_brian.verify(net, model, x, res)
        log.info("\n== %s variant (%s)\n%s\n\nper-layer report:\n%s\n\n%s", variant, path, net.summary(),
                 res.report.to_string(index=False), check)
        relu_pred = check.agreement  # fraction of SNN predictions equal to the ReLU ones
        rows.append({
            "variant": variant, "n_test": len(x), "relu_acc": record["test_accuracy"] if len(x) == record["n_test"]
            else float("nan"), "snn_acc": float((res.predictions == y).mean()), "agreement": relu_pred,
            "max_rel_err": float(check.layers["max_rel_err"].max()), "logit_max_rel_err": check.logit_max_rel_err,
            "spikes_per_neuron": float(res.report["spikes"][1:].sum() / (res.report["neurons"][1:].sum() * len(x))),
            "flagged": int(res.flagged.sum()),
        })
    with pd.option_context("display.width", 160):
        log.info("\n== summary\n%s", pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
