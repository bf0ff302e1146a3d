"""What an engine returns: logits, spike times per layer, and a per-layer report of what went wrong."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .network import TTFSNetwork

REPORT_COLUMNS = ["layer", "kind", "neurons", "spikes", "spikes_per_neuron", "clipped", "early_fired"]


@dataclass
class SimulationResult:
    """Result of running a converted network on a batch of ``N`` samples.

    ``spike_times[key]`` has shape ``(N, *layer.shape)`` in ms with NaN for "no spike"; there is an
    entry under every layer name and alias (ReLU and MaxPool2d module names of the original model).
    ``report`` has one row per coded layer (see :data:`REPORT_COLUMNS`); ``flagged[n]`` is True when
    any neuron of sample ``n`` was clipped or fired early, i.e. when the result may differ from the
    ReLU network.
    """

    logits: np.ndarray
    spike_times: dict[str, np.ndarray]
    report: pd.DataFrame
    flagged: np.ndarray
    backend: str = "analytic"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logits, axis=1)

    def values(self, net: TTFSNetwork, key: str, *, original_units: bool = True) -> np.ndarray:
        """Values decoded from spike times, ``(t_max - t) / tau_c`` (0 where silent).

        With ``original_units`` the weight-preprocessing scale is divided out, giving the
        activation of the original model.
        """
        layer = net.layer_for(key)
        decoded = np.nan_to_num((layer.t_max - self.spike_times[key]) / net.tau_c, nan=0.0)
        if original_units and "scale" in layer.arrays:
            decoded = decoded / layer.arrays["scale"]
        return decoded


def layer_record(layer_name: str, kind: str, spike_times: np.ndarray, clipped: np.ndarray | None = None,
                 early: np.ndarray | None = None) -> dict[str, Any]:
    """One report row; ``clipped`` and ``early`` are per-sample event counts ``(N,)`` (None: no events)."""
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
    }


def build_report(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records, columns=REPORT_COLUMNS)
