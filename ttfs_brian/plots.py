"""Figures from simulation results (matplotlib, saved as files)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .network import TTFSNetwork  # noqa: E402
from .neuron import integrator  # noqa: E402
from .result import SimulationResult  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def raster(net: TTFSNetwork, result: SimulationResult, path: str | Path, sample: int = 0,
           title: str | None = None) -> Path:
    """Spike raster of one sample, one band per coded layer, with every layer's window shaded."""
    layers = net.coded_layers()
    fig, ax = plt.subplots(figsize=(9, 1.1 * len(layers) + 1))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(layers)))
    for row, (layer, color) in enumerate(zip(layers, colors)):
        times = result.spike_times[layer.name][sample].reshape(-1)
        fired = ~np.isnan(times)
        y = row + 0.9 * (np.arange(times.size)[fired] / max(1, times.size))
        ax.scatter(times[fired], y, s=1.5, color=color, linewidths=0)
        ax.axvspan(layer.t_min, layer.t_max, ymin=row / len(layers), ymax=(row + 0.95) / len(layers),
                   color=color, alpha=0.12)
        ax.text(layer.t_max, row + 0.45, f" {fired.sum()}/{times.size}", va="center", fontsize=7)
    readout = net.output_layer.t_min
    ax.axvline(readout, color="k", ls="--", lw=0.8)
    ax.text(readout, len(layers) - 0.2, " logits read out", fontsize=8)
    ax.set_yticks(np.arange(len(layers)) + 0.45, [f"{layer.name} ({layer.kind})" for layer in layers])
    ax.set_ylim(-0.1, len(layers))
    ax.set_xlabel("time (ms)")
    ax.set_title(title or f"TTFS spikes of one sample ({net.variant} variant); shaded: layer windows")
    return _save(fig, path)


def activation_scatter(net: TTFSNetwork, result: SimulationResult, reference: np.ndarray, key: str,
                       path: str | Path) -> Path:
    """ReLU activation against the value decoded from the spike time, ``(t_max - t) / tau_c``, for one layer."""
    layer = net.layer_for(key)
    decoded = result.values(net, key, original_units=False).reshape(-1)
    scaled_reference = (reference * layer.arrays.get("scale", 1.0)).reshape(-1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(scaled_reference, decoded, s=2, alpha=0.4)
    hi = max(float(decoded.max()), float(scaled_reference.max()), 1e-12)
    ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="identity")
    err = np.abs(decoded - scaled_reference).max()
    ax.set_xlabel("ReLU activation (after weight rescaling)")
    ax.set_ylabel(r"$(t_{max} - t)/\tau_c$")
    ax.set_title(f"{key}: max |error| = {err:.1e}")
    ax.legend(loc="upper left")
    return _save(fig, path)


def spike_time_histogram(net: TTFSNetwork, result: SimulationResult, path: str | Path) -> Path:
    """Histogram of spike times, one panel per coded layer (input excluded), windows marked."""
    layers = [layer for layer in net.coded_layers() if layer.kind != "input"]
    fig, axes = plt.subplots(len(layers), 1, figsize=(7, 1.5 * len(layers) + 0.5))
    for ax, layer in zip(np.atleast_1d(axes), layers):
        times = result.spike_times[layer.name].reshape(-1)
        times = times[~np.isnan(times)]
        margin = 0.03 * (layer.t_max - layer.t_min)
        ax.hist(times, bins=np.linspace(layer.t_min - margin, layer.t_max + margin, 81), color="tab:blue", log=True)
        ax.axvline(layer.t_min, color="k", lw=0.8)
        ax.axvline(layer.t_max, color="k", lw=0.8, ls="--")
        ax.set_xlim(layer.t_min - margin, layer.t_max + margin)
        ax.set_title(f"{layer.name} ({layer.kind})", fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("spike time (ms); solid: t_min (largest value), dashed: t_max (value 0)")
    fig.tight_layout()
    return _save(fig, path)


def exact_potential(net: TTFSNetwork, result: SimulationResult, key: str, sample: int, neurons: np.ndarray,
                    times: np.ndarray) -> np.ndarray:
    """Membrane potential ``V(t)`` of ``exact`` neurons of a layer with dense projections, from the input spikes.

    ``V(t) = (alpha (t - t_on)^+ + sum_j J_ij (t - max(a_j, t_on))^+ + beta (t - t_min)^+) / tau_c`` with the
    arrivals ``a_j`` (spike time plus delay; :mod:`ttfs_brian.neuron`), evaluated in closed form at ``times``
    (ms); shape ``(len(neurons), len(times))``.
    """
    layer = net.layer_for(key)
    if net.variant != "exact" or layer.kind != "neuron" or any(p.kind != "dense" for p in layer.projections):
        raise ValueError("exact_potential draws hidden layers with dense projections of the exact variant")
    params = integrator(net, layer)
    potential = params.alpha[neurons, None] * (times - params.t_on)[None, :].clip(0)
    potential += params.beta[neurons, None] * (times - params.t_late)[None, :].clip(0)
    for proj in layer.projections:
        arrivals = np.maximum(result.spike_times[proj.source][sample].reshape(-1) + proj.delay, params.t_on)
        ramps = np.clip(times[None, :] - arrivals[:, None], 0, None)
        potential += proj.weight[neurons] @ ramps
    return potential / net.tau_c


def potential_traces(net: TTFSNetwork, result: SimulationResult, key: str, path: str | Path, sample: int = 0,
                     neurons: np.ndarray | None = None, brian_traces: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
                     ) -> Path:
    """Membrane potentials of a few neurons, each divided by its own threshold, spike times marked.

    Solid lines: the closed-form potential; ``brian_traces`` (neuron -> (t_ms, v)) are overlaid as dots.
    By default the four earliest-firing neurons and one forced at ``t_max`` are drawn.
    """
    layer = net.layer_for(key)
    if neurons is None:
        order = np.argsort(result.spike_times[key][sample].reshape(-1))
        neurons = np.concatenate([order[:4], order[-1:]])
    t_on = integrator(net, layer).t_on
    times = np.linspace(t_on, layer.t_max, 800)
    potential = exact_potential(net, result, key, sample, neurons, times)
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = plt.cm.tab10(np.arange(len(neurons)))
    for i, (neuron, color) in enumerate(zip(neurons, colors)):
        spike = result.spike_times[key][sample].reshape(-1)[neuron]
        theta = layer.arrays["threshold"].reshape(-1)[neuron]
        alive = times <= spike
        ax.plot(times[alive], potential[i, alive] / theta, color=color, lw=1.2,
                label=f"neuron {neuron} (theta = {theta:.3g})")
        ax.plot([spike], [1.0], marker="*", color=color, ms=10)
        if brian_traces and neuron in brian_traces:
            t_b, v_b = brian_traces[neuron]
            keep = t_b <= spike
            ax.plot(t_b[keep][::10], v_b[keep][::10] / theta, ".", color=color, ms=3)
    ax.axhline(1.0, color="k", ls=":", lw=0.8)
    for edge, label in ((t_on, "input window opens"), (layer.t_min, "t_min"), (layer.t_max, "t_max")):
        ax.axvline(edge, color="gray", lw=0.8, ls="--")
        ax.text(edge, ax.get_ylim()[1], f" {label}", fontsize=7, va="top")
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("V / threshold (star: spike)")
    ax.set_title(f"{key}: membrane potentials of sample {sample} ({net.variant} variant)")
    ax.legend(fontsize=7, loc="center left")
    return _save(fig, path)


def lenet_figures(out_dir: str | Path, sample: int = 0, brian: bool = False, n: int = 200) -> list[Path]:
    """The four figures of the bundled LeNet-5 on MNIST test digits (exact variant); with ``brian``, the
    membrane potentials that Brian2 (runtime, precise timing) records are overlaid on the closed form."""
    from . import data, zoo
    from .analytic import simulate_analytic
    from .converter import convert
    from .reference import reference_values

    out_dir = Path(out_dir)
    model, _ = zoo.load_pretrained("lenet5", "mnist5k")
    mnist = data.mnist5k()
    x = mnist.x_test[:n]
    net = convert(model, mnist.x_train, variant="exact", dt=0.01)
    result = simulate_analytic(net, x)
    _, refs = reference_values(net, model, x)
    order = np.argsort(result.spike_times["classifier.3"][sample].reshape(-1))
    neurons = np.concatenate([order[:4], order[-1:]])
    traces = None
    if brian:
        from .brian import Simulator

        recorded = Simulator(net, dt=0.01, codegen_target="numpy", record_v={"classifier.3": neurons}).run(
            x[sample:sample + 1]).meta["traces"]["classifier.3"]
        traces = {int(neuron): (recorded[0], recorded[1][i]) for i, neuron in enumerate(neurons)}
    paths = [
        raster(net, result, out_dir / "raster_lenet5.png", sample=sample,
               title=f"One test digit (label {mnist.y_test[sample]}) through LeNet-5, exact variant"),
        potential_traces(net, result, "classifier.3", out_dir / "traces_lenet5.png", sample=sample, neurons=neurons,
                         brian_traces=traces),
        activation_scatter(net, result, refs["features.6"], "features.6", out_dir / "scatter_lenet5.png"),
        spike_time_histogram(net, result, out_dir / "histogram_lenet5.png"),
    ]
    return paths
