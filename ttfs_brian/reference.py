"""Check a simulation against the float64 ReLU network it was converted from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .capture import record_activations
from .graph import signed_max_pool
from .network import TTFSNetwork
from .result import SimulationResult
from .validation import validate_inputs


@dataclass
class Verification:
    """Worst errors per layer and of the logits, and the prediction agreement.

    ``layers`` columns: ``max_abs_err`` (original units), ``max_abs_dt_ms`` (spike time against the
    ideal time ``t_max - scale * activation * tau_c``), ``max_rel_err`` (relative to the layer's
    window), the same over unflagged samples only (``*_unflagged``: any nonzero value there is an
    unflagged difference, i.e. a bug), and ``clipped``/``early_fired`` counts from the engine.
    """

    layers: pd.DataFrame
    logit_max_abs_err: float
    logit_max_rel_err: float
    logit_max_rel_err_unflagged: float
    agreement: float
    agreement_unflagged: float
    flagged_samples: int
    samples: int

    def __str__(self) -> str:
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            table = self.layers.to_string(index=False)
        return (f"{table}\n\nlogits: max |dz| = {self.logit_max_abs_err:.3g} (relative {self.logit_max_rel_err:.3g}; "
                f"unflagged samples {self.logit_max_rel_err_unflagged:.3g})\n"
                f"prediction agreement: {self.agreement:.4%} ({self.samples} samples, "
                f"{self.flagged_samples} flagged; agreement on unflagged {self.agreement_unflagged:.4%})")


def reference_values(net: TTFSNetwork, model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits and, per coded layer (by layer name), the ReLU network's activations the layer encodes."""
    nodes = {layer.attrs["reference"]["node"] for layer in net.coded_layers()
             if "node" in layer.attrs.get("reference", {})}
    logits, recorded = record_activations(model, torch.as_tensor(x), nodes)
    refs: dict[str, torch.Tensor] = {}
    for layer in net.coded_layers():
        spec = layer.attrs.get("reference")
        if spec is None:
            continue
        if "node" in spec:
            value = recorded[spec["node"]].reshape(-1, *layer.shape)
            refs[layer.name] = value.clamp(min=0) if spec["relu"] else value
            continue
        pred = refs[layer.inputs[0]]
        if spec["from_input"] == "maxpool":
            attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in layer.attrs.items()
                     if k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
            refs[layer.name] = signed_max_pool(pred, layer.arrays["sign"], attrs)
        else:
            refs[layer.name] = F.avg_pool2d(pred, kernel_size=tuple(spec["kernel_size"]), stride=tuple(spec["stride"]),
                                            padding=tuple(spec["padding"]), divisor_override=spec["divisor_override"])
    return logits.reshape(x.shape[0], -1).numpy(), {k: v.numpy() for k, v in refs.items()}


def verify(net: TTFSNetwork, model: nn.Module, x, result: SimulationResult | None = None) -> Verification:
    """Compare ``result`` (default: the analytic engine on ``x``) with the ReLU network on ``x``."""
    data = validate_inputs(net, x)
    if result is None:
        from .analytic import simulate_analytic
        result = simulate_analytic(net, data)
    logits_ref, refs = reference_values(net, model, data)
    ok = ~result.flagged
    rows = []
    report = result.report.set_index("layer")
    for layer in net.coded_layers():
        if layer.name not in refs:
            continue
        scale = layer.arrays.get("scale", np.ones(layer.shape))
        decoded = result.values(net, layer.name, original_units=False)
        err = np.abs(decoded - scale * refs[layer.name]).reshape(len(data), -1)
        window = net.window_length(layer)
        rows.append({
            "layer": layer.name,
            "kind": layer.kind,
            "neurons": layer.size,
            "window_ms": layer.t_max - layer.t_min,
            "max_abs_err": float((err / scale.reshape(1, -1)).max()),
            "max_abs_dt_ms": float(err.max() * net.tau_c),
            "max_rel_err": float(err.max() / window),
            "max_rel_err_unflagged": float(err[ok].max() / window) if ok.any() else 0.0,
            "clipped": int(report.loc[layer.name, "clipped"]),
            "early_fired": int(report.loc[layer.name, "early_fired"]),
        })
    dz = np.abs(result.logits - logits_ref)
    norm = max(float(np.abs(logits_ref).max()), 1e-300)
    agree = result.predictions == logits_ref.argmax(axis=1)
    return Verification(
        layers=pd.DataFrame(rows),
        logit_max_abs_err=float(dz.max()),
        logit_max_rel_err=float(dz.max() / norm),
        logit_max_rel_err_unflagged=float(dz[ok].max() / norm) if ok.any() else 0.0,
        agreement=float(agree.mean()),
        agreement_unflagged=float(agree[ok].mean()) if ok.any() else 1.0,
        flagged_samples=int((~ok).sum()),
        samples=len(data),
    )
