"""Check a simulation against the float64 ReLU network it was converted from."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import evaluate
from .capture import record_activations
from .errors import InputError, ModelMismatchError
from .network import TTFSNetwork
from .result import FLAG_REASONS, SimulationResult
from .validation import validate_inputs

DEFAULT_TOLERANCE = 1e-9
"""Largest unflagged error (relative to the layer window, and of the logits) that a verification accepts."""


@dataclass
class Verification:
    """Worst errors per layer and of the logits, and the prediction agreement.

    ``layers`` columns: ``max_abs_err`` (original units), ``max_abs_dt_ms`` (spike time against the
    ideal time ``t_max - scale * activation * tau_c``), ``max_rel_err`` (relative to the layer's
    window), ``error_bound_ms`` (the engine's bound on the spike-time error: grid timing; 0 = exact),
    ``max_rel_err_unflagged``: the worst error *beyond that bound* on unflagged samples, relative to the
    window (any value above rounding is an unflagged difference, i.e. a bug), and ``clipped``/
    ``early_fired`` counts from the engine. ``flags`` counts the flagged samples per reason
    (:data:`ttfs_brian.result.FLAG_REASONS`).
    """

    layers: pd.DataFrame
    logit_max_abs_err: float
    logit_max_rel_err: float
    logit_max_rel_err_unflagged: float
    agreement: float
    agreement_unflagged: float
    flagged_samples: int
    samples: int
    flags: dict[str, int] = field(default_factory=dict)
    unflagged_disagreements: int = 0

    def failures(self, tolerance: float = DEFAULT_TOLERANCE, max_flagged: int = 0) -> list[str]:
        """Why this verification fails (empty when it passes).

        It fails on any NaN, on an unflagged error above ``tolerance`` (relative to the layer window,
        and of the logits relative to the largest logit), on an unflagged sample whose prediction
        differs from the ReLU network, and when more than ``max_flagged`` samples are flagged.
        """
        problems = []
        numbers = np.concatenate([self.layers.select_dtypes("number").to_numpy(dtype=float).reshape(-1),
                                  [self.logit_max_abs_err, self.logit_max_rel_err, self.logit_max_rel_err_unflagged,
                                   self.agreement, self.agreement_unflagged]])
        if np.isnan(numbers).any():
            problems.append("the comparison contains NaN (a NaN network or result); reconvert with finite parameters")
        worst = max([self.logit_max_rel_err_unflagged, *self.layers["max_rel_err_unflagged"]], default=0.0)
        if worst > tolerance:
            problems.append(f"unflagged error {worst:.3g} exceeds {tolerance:g} (relative to the layer window)")
        if self.unflagged_disagreements:
            problems.append(f"{self.unflagged_disagreements} unflagged samples predict another class than the ReLU "
                            "network (not a tie of its logits)")
        if self.flagged_samples > max_flagged:
            reasons = "; ".join(f"{count} samples: {FLAG_REASONS[reason]}"
                                for reason, count in self.flags.items() if count)
            problems.append(f"{self.flagged_samples} of {self.samples} samples are flagged (allowed: {max_flagged}), "
                            f"so their agreement proves nothing. {reasons}")
        return problems

    @property
    def passed(self) -> bool:
        """True when :meth:`failures` (default tolerance, no flagged sample) finds nothing."""
        return not self.failures()

    def __str__(self) -> str:
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            table = self.layers.to_string(index=False)
        flags = ", ".join(f"{reason} {count}" for reason, count in self.flags.items() if count) or "none"
        return (f"{table}\n\nlogits: max |dz| = {self.logit_max_abs_err:.3g} (relative {self.logit_max_rel_err:.3g}; "
                f"unflagged samples {self.logit_max_rel_err_unflagged:.3g})\n"
                f"prediction agreement: {self.agreement:.4%} ({self.samples} samples, "
                f"{self.flagged_samples} flagged; agreement on unflagged {self.agreement_unflagged:.4%})\n"
                f"flagged samples by reason: {flags}")


def reference_values(net: TTFSNetwork, model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits and, per coded layer (by layer name), the ReLU network's activations the layer encodes."""
    nodes = {layer.attrs["reference"]["node"] for layer in net.coded_layers()
             if "node" in layer.attrs.get("reference", {})}
    try:
        logits, recorded = record_activations(model, torch.as_tensor(x), nodes)
    except Exception as exc:  # torch raises many types for a model that does not fit the data
        raise ModelMismatchError(
            f"the model failed on data of shape {tuple(x.shape)} ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); pass the model the network was "
            "converted from") from None
    missing = sorted(nodes - set(recorded))
    expected = (x.shape[0], net.num_classes)
    if missing or tuple(logits.reshape(x.shape[0], -1).shape) != expected:
        raise ModelMismatchError(
            f"the model does not match the network (model output {tuple(logits.shape)}, network logits {expected}"
            f"{'; no operations ' + ', '.join(missing[:5]) if missing else ''}); pass the model the network was "
            "converted from")
    refs: dict[str, torch.Tensor] = {}
    for layer in net.coded_layers():
        spec = layer.attrs.get("reference")
        if spec is None:
            continue
        if "node" in spec:
            value = recorded[spec["node"]]
            if "channels" in spec:
                value = value[:, spec["channels"][0]:spec["channels"][1]]
            if value[0].numel() != layer.size:
                raise ModelMismatchError(f"the model's '{spec['node']}' has shape {tuple(value.shape[1:])}, the "
                                         f"network's layer {layer.name!r} {layer.shape}; pass the model the network "
                                         "was converted from")
            value = value.reshape(-1, *layer.shape)
            refs[layer.name] = value.clamp(min=0) if spec["relu"] else value
            continue
        proj = layer.projections[0]
        if spec["derived"] == "maxpool":
            refs[layer.name] = evaluate.pool(proj, refs[proj.source], layer.arrays["sign"])
        else:  # an average pool of its sources (the parts of a concatenation, in channel order)
            source = torch.cat([refs[p.source] for p in layer.projections], dim=1)
            refs[layer.name] = F.avg_pool2d(source, kernel_size=tuple(spec["kernel_size"]),
                                            stride=tuple(spec["stride"]), padding=tuple(spec["padding"]),
                                            divisor_override=spec["divisor_override"])
    return logits.reshape(x.shape[0], -1).numpy(), {k: v.numpy() for k, v in refs.items()}


def verify(net: TTFSNetwork, model: nn.Module, x, result: SimulationResult | None = None) -> Verification:
    """Compare ``result`` (default: the analytic engine on ``x``) with the ReLU network on ``x``.

    Errors within a result's own bound (grid timing: :attr:`SimulationResult.error_bound`) are
    expected; ``max_rel_err_unflagged`` and ``logit_max_rel_err_unflagged`` measure what lies beyond.
    """
    data = validate_inputs(net, x)
    if result is None:
        from .analytic import simulate_analytic
        result = simulate_analytic(net, data)
    if result.logits.shape[0] != len(data):
        raise InputError(f"the result holds {result.logits.shape[0]} samples but the data {len(data)}; verify a "
                         "result against the data it was simulated on")
    logits_ref, refs = reference_values(net, model, data)
    ok = ~result.flagged
    bound = result.error_bound
    rows = []
    report = result.report.set_index("layer")
    for layer in net.coded_layers():
        if layer.name not in refs:
            continue
        scale = layer.arrays.get("scale", np.ones(layer.shape))
        decoded = result.values(net, layer.name, original_units=False)
        err = np.abs(decoded - scale * refs[layer.name]).reshape(len(data), -1)
        allowed = 0.0 if bound is None else bound.spike_ms[layer.name].reshape(1, -1) / net.tau_c
        beyond = np.maximum(err - allowed, 0.0)
        window = net.window_length(layer)
        rows.append({
            "layer": layer.name,
            "kind": layer.kind,
            "neurons": layer.size,
            "window_ms": layer.t_max - layer.t_min,
            "max_abs_err": float((err / scale.reshape(1, -1)).max()),
            "max_abs_dt_ms": float(err.max() * net.tau_c),
            "max_rel_err": float(err.max() / window),
            "error_bound_ms": 0.0 if bound is None else float(bound.spike_ms[layer.name].max()),
            "max_rel_err_unflagged": float(beyond[ok].max() / window) if ok.any() else 0.0,
            "clipped": int(report.loc[layer.name, "clipped"]),
            "early_fired": int(report.loc[layer.name, "early_fired"]),
        })
    dz = np.abs(result.logits - logits_ref)
    dz_beyond = dz if bound is None else np.maximum(dz - bound.logits.reshape(1, -1), 0.0)
    norm = max(float(np.abs(logits_ref).max()), 1e-300)
    agree = result.predictions == logits_ref.argmax(axis=1)
    rows_n = np.arange(len(data))
    gap = logits_ref[rows_n, logits_ref.argmax(axis=1)] - logits_ref[rows_n, result.predictions]
    real_disagreement = ~agree & ok & (gap > DEFAULT_TOLERANCE * norm)  # a tie may flip on rounding alone
    return Verification(
        layers=pd.DataFrame(rows),
        logit_max_abs_err=float(dz.max()),
        logit_max_rel_err=float(dz.max() / norm),
        logit_max_rel_err_unflagged=float(dz_beyond[ok].max() / norm) if ok.any() else 0.0,
        agreement=float(agree.mean()),
        agreement_unflagged=float(agree[ok].mean()) if ok.any() else 1.0,
        flagged_samples=int((~ok).sum()),
        samples=len(data),
        flags=result.flag_counts(),
        unflagged_disagreements=int(real_disagreement.sum()),
    )
