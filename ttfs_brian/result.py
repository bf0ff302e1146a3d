"""What an engine returns: logits, spike times per layer, and a per-layer report of what went wrong."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .coding import decode
from .grid_bound import GridBound
from .network import TTFSNetwork

REPORT_COLUMNS = ["layer", "kind", "neurons", "spikes", "spikes_per_neuron", "clipped", "early_fired", "not_rising",
                  "dropped", "error_bound_ms"]


FLAG_REASONS = {
    "input_out_of_range": "inputs outside the calibrated range were clipped: convert with input_range=(low, high) "
                          "covering the data, or recalibrate on data like these",
    "clipped": "activations above their layer's window were clipped: convert with a larger zeta, or calibrate on "
               "data like these",
    "early_fired": "early firing (variant exact): a threshold crossing before t_min caused by the order of the input "
                   "spikes; variant='sparse' cannot fire early",
    "not_rising": "a perturbation left neurons whose potential cannot rise after their inputs (exact: alpha + sum J <= "
                  "0, the mapping's S < 1 broken; sparse: a drive <= 0), so they fire only early, when forced or never: "
                  "lower the level (weight_bits: more bits)",
    "uncertain_prediction": "grid timing: the prediction could change within the spike-time error bound; use a "
                            "smaller dt or timing='precise'",
}
"""Why a sample can be flagged, and what to do about it."""


def no_flags(n: int) -> dict[str, np.ndarray]:
    """Per-sample flag masks, all False, one per reason of :data:`FLAG_REASONS`."""
    return {reason: np.zeros(n, dtype=bool) for reason in FLAG_REASONS}


def note_layer_flags(reasons: dict[str, np.ndarray], kind: str, clipped: np.ndarray | None,
                     early: np.ndarray | None, not_rising: int = 0) -> None:
    """Flag the samples with per-sample ``clipped``/``early`` counts of one layer (the input layer's
    clipping is out-of-range input); a layer with ``not_rising`` neurons flags every sample."""
    if not_rising:
        reasons["not_rising"][:] = True
    if clipped is not None:
        reasons["input_out_of_range" if kind == "input" else "clipped"] |= np.asarray(clipped) > 0
    if early is not None:
        reasons["early_fired"] |= np.asarray(early) > 0


class Report(pd.DataFrame):
    """The per-layer report: a DataFrame that prints every column (``print(res.report)``)."""

    @property
    def _constructor(self):
        return Report

    def __str__(self) -> str:
        return self.to_string(index=False)

    __repr__ = __str__


@dataclass
class SimulationResult:
    """Result of running a converted network on a batch of ``N`` samples.

    ``spike_times[key]`` has shape ``(N, *layer.shape)`` in ms with NaN for "no spike"; there is an
    entry under every layer name and alias (ReLU and MaxPool2d module names of the original model).
    ``report`` has one row per coded layer (see :data:`REPORT_COLUMNS`); ``flagged[n]`` is True when
    any neuron of sample ``n`` was clipped or fired early, or (grid timing) when its prediction could
    change within the error bound, i.e. whenever the result may differ from the ReLU network;
    ``reasons`` holds one such per-sample mask per reason of :data:`FLAG_REASONS`.
    ``error_bound`` (grid timing only) holds the per-neuron bounds on the spike-time error and the
    per-class bounds on the logits (:mod:`ttfs_brian.grid_bound`); ``None`` means exact to rounding.
    """

    logits: np.ndarray
    spike_times: dict[str, np.ndarray]
    report: pd.DataFrame
    reasons: dict[str, np.ndarray]
    backend: str = "analytic"
    meta: dict[str, Any] = field(default_factory=dict)
    error_bound: GridBound | None = None

    @property
    def flagged(self) -> np.ndarray:
        """Samples whose result may differ from the ReLU network, for any reason of :data:`FLAG_REASONS`."""
        return np.logical_or.reduce(list(self.reasons.values()))

    def flag_counts(self) -> dict[str, int]:
        """Flagged samples per reason."""
        return {reason: int(mask.sum()) for reason, mask in self.reasons.items()}

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logits, axis=1)

    def values(self, net: TTFSNetwork, key: str, *, original_units: bool = True) -> np.ndarray:
        """Values decoded from spike times, ``(t_max - t) / tau_c`` (0 where silent).

        With ``original_units`` the weight-preprocessing scale is divided out, giving the
        activation of the original model.
        """
        layer = net.layer_for(key)
        decoded = decode(net, layer, self.spike_times[key])
        if original_units and "scale" in layer.arrays:
            decoded = decoded / layer.arrays["scale"]
        return decoded


def named_results(net: TTFSNetwork, by_layer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-layer arrays ``(N, *shape)`` under every layer name and alias, plus the values that span several
    layers (a ReLU of a concatenation: ``net.composites``), concatenated along channels."""
    named: dict[str, np.ndarray] = {}
    for name, array in by_layer.items():
        for key in net.names(net.layers[name]):
            named.setdefault(key, array)
    for alias, parts in net.composites.items():
        named[alias] = np.concatenate([by_layer[part] for part in parts], axis=1)
    return named


def layer_record(layer_name: str, kind: str, spike_times: np.ndarray, clipped: np.ndarray | None = None,
                 early: np.ndarray | None = None, error_bound_ms: float = 0.0, dropped: int = 0,
                 not_rising: int = 0) -> dict[str, Any]:
    """One report row; ``clipped`` and ``early`` are per-sample event counts ``(N,)`` (None: no events);
    ``dropped`` counts the layer's spikes lost in transmission (perturbation ``drop``); ``not_rising`` the
    layer's neurons whose potential cannot rise after their inputs (:func:`ttfs_brian.neuron.not_rising`)."""
    n = spike_times.shape[0]
    neurons = int(np.prod(spike_times.shape[1:]))
    spikes = int(spike_times.size - np.count_nonzero(np.isnan(spike_times)))
    return {
        "layer": layer_name,
        "kind": kind,
        "neurons": neurons,
        "spikes": spikes,
        "spikes_per_neuron": spikes / max(1, n * neurons),
        "clipped": 0 if clipped is None else int(clipped.sum()),
        "early_fired": 0 if early is None else int(early.sum()),
        "not_rising": int(not_rising),
        "dropped": int(dropped),
        "error_bound_ms": float(error_bound_ms),
    }


def build_report(records: list[dict[str, Any]]) -> Report:
    return Report(pd.DataFrame.from_records(records, columns=REPORT_COLUMNS))
