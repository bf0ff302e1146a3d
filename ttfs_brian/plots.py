"""Figures from simulation results (matplotlib, saved as files)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .network import TTFSNetwork  # noqa: E402
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
    fig, axes = plt.subplots(len(layers), 1, figsize=(7, 1.4 * len(layers) + 0.5), sharex=True)
    for ax, layer in zip(np.atleast_1d(axes), layers):
        times = result.spike_times[layer.name].reshape(-1)
        times = times[~np.isnan(times)]
        ax.hist(times, bins=80, color="tab:blue")
        ax.axvline(layer.t_min, color="k", lw=0.8)
        ax.axvline(layer.t_max, color="k", lw=0.8, ls="--")
        ax.set_ylabel(layer.name, rotation=0, ha="right", fontsize=8)
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].set_xlabel("spike time (ms); solid: t_min, dashed: t_max (0 value)")
    return _save(fig, path)
