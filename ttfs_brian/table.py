"""The conversion table: trained ReLU networks, converted, simulated, compared with the ReLU network.

One row per (dataset, model, variant, engine, device, timing, dt, n_test): every parameter that
changes a row is in its key. Rows are appended to the CSV as soon as they are measured
(:class:`~ttfs_brian.store.RowStore`); a rerun skips the rows whose key is already there and
recomputes rows cut short by an interruption.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from . import data as datasets
from . import zoo
from .converter import convert
from .cost import relu_macs, synaptic_events
from .reference import verify
from .store import RowStore

log = logging.getLogger(__name__)

COLUMNS = ["dataset", "model", "variant", "engine", "device", "timing", "dt", "n_test", "relu_acc", "snn_acc",
           "agreement", "flagged", "max_abs_dt_ms", "max_logit_err", "spikes_per_neuron",
           "synaptic_events_per_image", "relu_macs_per_image", "wall_s_per_image", "compile_s"]
KEY = ["dataset", "model", "variant", "engine", "device", "timing", "dt", "n_test"]

MODELS = [("mnist5k", "fc2"), ("mnist5k", "lenet5"), ("mnist5k", "vgg_small"), ("mnist5k", "resnet8"),
          ("digits", "digits_net"), ("mnist5k32", "vgg16")]

SMALLER_SUBSETS = {("vgg_small", "grid"): 10, ("resnet8", "grid"): 3, ("vgg16", "precise"): 20}
COARSER_STEP = {("vgg16", "precise"): 1.0}
"""A larger precise step where the default one is slow (precise timing is exact at any dt the windows align to)."""
"""Fewer test samples where an engine is slow: at dt = 0.001 ms VGG-small takes ~20 s per image, ResNet-8 (8.6M
synapses, 116 ms windows) longer; VGG-16 (~300M synapses) seconds per image even with precise timing."""

SKIPPED = {("vgg16", "grid"): "VGG-16 on the 0.001 ms grid: ~10^5 steps of 280k neurons per image"}
"""Rows the default table leaves out, and why."""


@dataclass(frozen=True)
class Engine:
    """How to run a converted network: ``analytic``, or Brian2 on ``device`` with ``timing`` and ``dt``."""

    name: str
    device: str = ""
    timing: str = ""
    dt: float | None = None
    subset: int | None = None  # test samples used (None: the whole test split)


ENGINES = {
    "analytic": Engine("analytic"),
    # precise timing is exact for any dt once windows are dt-aligned, so a coarse step is enough
    "precise": Engine("brian2", "cpp_standalone", "precise", 0.2),
    "grid": Engine("brian2", "cpp_standalone", "grid", 0.001, subset=50),
}


def engine_for(arch: str, name: str) -> Engine:
    """The engine ``name`` of :data:`ENGINES`, with the model's :data:`COARSER_STEP` if it has one."""
    engine = ENGINES[name]
    dt = COARSER_STEP.get((arch, engine.timing))
    return engine if dt is None else replace(engine, dt=dt)


def test_count(dataset: str, arch: str, engine: Engine, n_test: int | None, available: int) -> int:
    """Test samples a row uses: the request, the engine's subset and the split, whichever is smallest."""
    subset = SMALLER_SUBSETS.get((arch, engine.timing), engine.subset)
    return min(x for x in (n_test, subset, available) if x is not None)


def run_row(dataset: str, arch: str, variant: str, engine: Engine, *, models_dir: Path = zoo.MODELS_DIR,
            n_test: int | None = None, build_root: Path | None = None) -> dict:
    """Convert one bundled model, simulate its test split with ``engine``, and measure everything."""
    model, record = zoo.load_pretrained(arch, dataset, models_dir)
    data = datasets.load_dataset(dataset)
    limit = test_count(dataset, arch, engine, n_test, len(data.x_test))
    x, y = data.x_test[:limit], data.y_test[:limit]
    net = convert(model, data.x_train, variant=variant, dt=engine.dt)
    compile_s = 0.0
    started = time.perf_counter()
    if engine.name == "analytic":
        from .analytic import simulate_analytic
        result = simulate_analytic(net, x)
    else:
        from .brian import Simulator
        build_dir = None if build_root is None else Path(build_root) / f"{dataset}_{arch}_{variant}_{engine.timing}"
        sim = Simulator(net, device=engine.device, timing=engine.timing, dt=engine.dt, build_dir=build_dir)
        result = sim.run(x)
        compile_s = result.meta.get("compile_s", 0.0)
    wall = time.perf_counter() - started
    check = verify(net, model, x, result)
    report = result.report[result.report["kind"] != "input"]
    return {
        "dataset": dataset, "model": arch, "variant": variant, "engine": engine.name, "device": engine.device or "-",
        "timing": engine.timing or "-", "dt": engine.dt if engine.dt is not None else np.nan, "n_test": len(x),
        "relu_acc": _relu_accuracy(model, x, y), "snn_acc": float((result.predictions == y).mean()),
        "agreement": check.agreement, "flagged": check.flagged_samples,
        "max_abs_dt_ms": float(check.layers["max_abs_dt_ms"].max()), "max_logit_err": check.logit_max_abs_err,
        "spikes_per_neuron": float(report["spikes"].sum() / (report["neurons"].sum() * len(x))),
        "synaptic_events_per_image": synaptic_events(net, result) / len(x),
        "relu_macs_per_image": relu_macs(net), "wall_s_per_image": wall / len(x), "compile_s": compile_s,
    }


def _relu_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model.eval()(torch.as_tensor(x)).argmax(1).numpy() == y).mean())


def build_table(out: Path, *, models: Iterable[tuple[str, str]] = MODELS, variants: Iterable[str] = ("exact", "sparse"),
                engines: Iterable[str] = ("analytic", "precise", "grid"), models_dir: Path = zoo.MODELS_DIR,
                n_test: int | None = None, build_root: Path | None = None) -> pd.DataFrame:
    """Measure every missing row and append it to ``out`` (CSV); returns the whole table."""
    from tqdm import tqdm

    store = RowStore(out, COLUMNS, KEY)
    sizes = {ds: len(datasets.load_dataset(ds).x_test) for ds in {ds for ds, _ in models}}
    todo = [(ds, arch, variant, engine_for(arch, name)) for ds, arch in models for variant in variants
            for name in engines if (arch, ENGINES[name].timing or name) not in SKIPPED]
    for (arch, timing), why in SKIPPED.items():
        if any(a == arch for _, a in models) and timing in {ENGINES[name].timing or name for name in engines}:
            log.info("leaving out %s with %s timing: %s", arch, timing, why)
    for ds, arch, variant, engine in tqdm(todo, desc="conversion table"):
        key = {"dataset": ds, "model": arch, "variant": variant, "engine": engine.name, "device": engine.device or "-",
               "timing": engine.timing or "-", "dt": engine.dt if engine.dt is not None else np.nan,
               "n_test": test_count(ds, arch, engine, n_test, sizes[ds])}
        if store.has(key):
            log.info("skipping %s (already in %s)", key, out)
            continue
        row = run_row(ds, arch, variant, engine, models_dir=models_dir, n_test=n_test, build_root=build_root)
        log.info("%s: agreement %.4f, snn_acc %.4f, max |dt| %.2e ms", key, row["agreement"], row["snn_acc"],
                 row["max_abs_dt_ms"])
        store.append(row)
    return store.read()


def results_index(table: pd.DataFrame, figures: Iterable[Path], out: Path, commands: Iterable[str],
                  notes: Iterable[str] = ()) -> Path:
    """``results/README.md``: the conversion table as Markdown, the commands that made it, the figures."""
    shown = table.copy()
    for column in ("max_abs_dt_ms", "max_logit_err"):
        shown[column] = shown[column].map(lambda v: f"{v:.1e}")
    for column in ("relu_acc", "snn_acc", "agreement", "spikes_per_neuron"):
        shown[column] = shown[column].map(lambda v: f"{v:.4f}")
    shown["synaptic_events_per_image"] = shown["synaptic_events_per_image"].map(lambda v: f"{v:,.0f}")
    shown["relu_macs_per_image"] = shown["relu_macs_per_image"].map(lambda v: f"{v:,.0f}")
    shown["wall_s_per_image"] = shown["wall_s_per_image"].map(lambda v: f"{v * 1e3:.2f} ms")
    shown = shown.rename(columns={"wall_s_per_image": "wall_per_image"})
    lines = ["# Results", "", "## Conversion table", "",
             "Trained ReLU networks (bundled in `models/`), converted with the training images as calibration set "
             "and evaluated on the test split. `agreement`: fraction of test samples on which the spiking network "
             "predicts the same class as the ReLU network. `max_abs_dt_ms`: worst difference between a spike time "
             "and the time that encodes the ReLU activation exactly. `flagged`: samples in which the engine "
             "counted clipping or early firing.", "", shown.to_markdown(index=False), ""]
    if notes:
        lines += ["### Notes", "", *[f"- {note}" for note in notes], ""]
    lines += ["## Commands", "", "```bash", *commands, "```", "", "## Figures", ""]
    for path in figures:
        path = Path(path)
        lines += [f"![{path.stem}](figures/{path.name})", ""]
    out.write_text("\n".join(lines))
    return out
