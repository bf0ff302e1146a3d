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


REPRODUCTION_RTOL = 1e-12
"""Relative bound of the reproducibility contract (:func:`reproduction_failures`): spike times to this fraction of
the latest spike time of the result, logits to this fraction of the largest logit."""


def reproduction_failures(res_a: SimulationResult, res_b: SimulationResult,
                          rtol: float = REPRODUCTION_RTOL) -> list[str]:
    """What in ``res_b`` breaks the contract of reproducing ``res_a``: the same samples, perturbation and seeds,
    computed in another batch, chunk, shard, thread count, process or engine (empty: reproduced).

    The contract: everything *drawn or decided* is identical (which spikes exist, which were lost, every flag
    and its reason, the per-layer counts of the report, the predictions); every *value* (spike times, logits)
    agrees to ``rtol`` of its scale (the latest spike time, the largest logit). Values are not bit-identical:
    a float64 matrix product sums in an order that depends on the batch's shape and the CPU's kernels
    (AVX-512 machines differ in the last bit between a batch of 11 and chunks of 4).
    A decision may flip only where a value lies within that rounding of its threshold (a tie), which random
    data do not produce.
    """
    if res_a.logits.shape != res_b.logits.shape:
        return [f"logits of shape {res_a.logits.shape} vs {res_b.logits.shape}: not the same samples"]
    failures = []
    horizon = max([1.0] + [float(np.nanmax(np.abs(t))) for t in res_a.spike_times.values() if np.isfinite(t).any()])
    for key, a in res_a.spike_times.items():
        b = res_b.spike_times.get(key)
        if b is None or b.shape != a.shape:
            failures.append(f"{key}: spike times missing or of another shape")
            continue
        silent = np.isnan(a) != np.isnan(b)
        if silent.any():
            failures.append(f"{key}: {int(silent.sum())} neuron(s) spike in one result only")
        both = ~np.isnan(a) & ~np.isnan(b)
        worst = float(np.abs(a[both] - b[both]).max(initial=0.0))
        if worst > rtol * horizon:
            failures.append(f"{key}: spike times differ by {worst:.3g} ms > {rtol:g} x {horizon:.3g} ms")
    scale = max(1.0, float(np.abs(res_a.logits).max(initial=0.0)))
    worst = float(np.abs(res_a.logits - res_b.logits).max(initial=0.0))
    if not worst <= rtol * scale:
        failures.append(f"logits differ by {worst:.3g} > {rtol:g} x {scale:.3g}")
    changed = int((res_a.predictions != res_b.predictions).sum())
    if changed:
        failures.append(f"{changed} prediction(s) differ")
    for reason, mask in res_a.reasons.items():
        other = res_b.reasons.get(reason)
        if other is None or not np.array_equal(mask, other):
            failures.append(f"flag {reason!r} differs")
    counts = [c for c in res_a.report.columns if pd.api.types.is_integer_dtype(res_a.report[c])
              or c in ("layer", "kind")]
    if list(res_a.report.columns) != list(res_b.report.columns) or not res_a.report[counts].equals(
            res_b.report[counts]):
        failures.append(f"report counts differ:\n{res_a.report}\n{res_b.report}")
    return failures
