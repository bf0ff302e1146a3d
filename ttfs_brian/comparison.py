"""Compare two simulation results spike by spike (e.g. Brian2 against the analytic engine)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InputError
from .result import SimulationResult


def compare(res_a: SimulationResult, res_b: SimulationResult, samples: np.ndarray | None = None) -> pd.DataFrame:
    """One row per layer, then one row ``logits``, over the samples selected by the boolean mask ``samples``
    (default: all).

    Layer rows: ``max_abs_dt_ms`` and ``mean_abs_dt_ms`` over spikes present in both results,
    ``spikes_only_a`` / ``spikes_only_b`` (a neuron that fired in one result and not in the other).
    The ``logits`` row: ``logit_max_abs_err``, ``logit_max_rel_err`` (relative to the largest |logit| of
    ``res_a``) and ``agreement`` of the predictions, which is also in ``df.attrs["agreement"]``.
    """
    if res_a.logits.shape != res_b.logits.shape:
        raise InputError(f"results of different batches: logits {res_a.logits.shape} vs {res_b.logits.shape}")
    keep = slice(None) if samples is None else np.asarray(samples, dtype=bool)
    rows = []
    for layer in res_a.report["layer"]:
        if layer not in res_b.spike_times:
            raise InputError(f"layer {layer!r} is missing from the second result")
        a, b = res_a.spike_times[layer][keep], res_b.spike_times[layer][keep]
        fired_a, fired_b = ~np.isnan(a), ~np.isnan(b)
        both = fired_a & fired_b
        dt = np.abs(a[both] - b[both])
        rows.append({
            "layer": layer, "neurons": int(np.prod(a.shape[1:])), "spikes_a": int(fired_a.sum()),
            "spikes_b": int(fired_b.sum()), "spikes_only_a": int((fired_a & ~fired_b).sum()),
            "spikes_only_b": int((fired_b & ~fired_a).sum()),
            "max_abs_dt_ms": float(dt.max()) if dt.size else 0.0, "mean_abs_dt_ms": float(dt.mean()) if dt.size else 0.0,
        })
    dz = np.abs(res_a.logits[keep] - res_b.logits[keep])
    agreement = float((res_a.predictions[keep] == res_b.predictions[keep]).mean()) if dz.size else 1.0
    rows.append({"layer": "logits", "neurons": res_a.logits.shape[1], "logit_max_abs_err": float(dz.max(initial=0.0)),
                 "logit_max_rel_err": float(dz.max(initial=0.0) / max(float(np.abs(res_a.logits).max()), 1e-300)),
                 "agreement": agreement})
    table = pd.DataFrame(rows)
    table.attrs["agreement"] = agreement
    return table
