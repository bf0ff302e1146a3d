"""The analytic engine: every spike time of a converted network in closed form, batched, float64.

For a hidden layer with input window length ``B_in`` and window ``[t_min, t_max]`` (length ``B``),
inputs decoded as ``x_j`` (clamped to ``[0, B_in]``) and times in units of tau_c:

``sparse``:  ``V(t_min) = W x``, then slope 1, so ``t = t_max - (V(t_min) - (B - theta))`` and the
neuron is silent when that value is <= 0.

``exact``:   once all inputs have arrived (``t >= t_min``), ``V(t) = V_end + (1 + sum_j J_j)(t - t_min)``
with ``V_end = B_in + J x``, so the closed-form crossing is ``t_min + (theta - V_end) / (1 + sum J)``.
The true first crossing can be earlier (early firing): inside the input window
``V(t_min - s) = V_end - s - sum_j J_j min(x_j, s)``, which can exceed ``theta`` only if
``|J^-| x (1 - 1 / sum|J^-|) >= theta - V_end``. Neurons that pass this cheap bound are
re-simulated event by event over their sorted input spikes.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from .graph import conv_attrs, signed_max_pool
from .network import Layer, TTFSNetwork
from .result import SimulationResult, build_report, layer_record, no_flags, note_layer_flags
from .validation import encode_inputs, validate_inputs

log = logging.getLogger(__name__)

CROSSING_CHUNK = 2_000_000
"""Candidate neurons x fan-in processed at once by the event-driven early-firing check."""


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def synaptic_input(layer: Layer, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_j w_ij x_j`` for every neuron of ``layer``: ``(N, *in_shape) -> (N, *layer.shape)``."""
    if layer.kind == "linear":
        return (x.reshape(x.shape[0], -1) @ weight.T).reshape(x.shape[0], *layer.shape)
    return F.conv2d(x, weight, **conv_attrs(layer.attrs))


def weight_sum(layer: Layer, weight: torch.Tensor) -> torch.Tensor:
    """Per-neuron sum of the incoming weights, zero-padded inputs included, shaped like the layer."""
    sums = weight.reshape(weight.shape[0], -1).sum(dim=1)
    return sums.reshape((-1,) + (1,) * (len(layer.shape) - 1)).expand(layer.shape)


def simulate_analytic(net: TTFSNetwork, x: np.ndarray | torch.Tensor) -> SimulationResult:
    """Spike times of every layer, logits and a report of clipping and early firing."""
    started = time.perf_counter()
    data = validate_inputs(net, x)
    n = data.shape[0]
    values: dict[str, torch.Tensor] = {}
    spike_times: dict[str, np.ndarray] = {}
    records, reasons = [], no_flags(n)
    logits = None
    with torch.no_grad():
        for layer in net.layers.values():
            if layer.is_output:
                logits = _output(net, layer, values).reshape(n, -1).numpy()
                continue
            clipped = early = None
            if layer.kind == "input":
                u, clipped_np = encode_inputs(net, data)
                value, clipped = _t(u), torch.as_tensor(clipped_np)
            elif layer.kind == "maxpool":
                value = signed_max_pool(values[layer.inputs[0]], layer.arrays["sign"], _pool_attrs(layer))
            elif net.variant == "exact":
                value, clipped, early = _exact_layer(net, layer, values)
            else:
                value, clipped = _sparse_layer(net, layer, values)
            values[layer.name] = value
            times = value.numpy() * -net.tau_c + layer.t_max
            if net.variant == "sparse":
                times[value.numpy() <= 0] = np.nan
            for key in (layer.name, *layer.aliases):
                spike_times[key] = times
            counts = [None if mask is None else mask.reshape(n, -1).sum(dim=1).numpy() for mask in (clipped, early)]
            records.append(layer_record(layer.name, layer.kind, times, *counts))
            note_layer_flags(reasons, layer.kind, *counts)
    assert logits is not None
    report = build_report(records)
    return SimulationResult(logits, spike_times, report, reasons, backend="analytic",
                            meta={"wall_s": time.perf_counter() - started})


def _pool_attrs(layer: Layer) -> dict:
    return {key: tuple(layer.attrs[key]) if isinstance(layer.attrs[key], list) else layer.attrs[key]
            for key in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}


def _clamped_input(net: TTFSNetwork, layer: Layer, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Values arriving at ``layer``: a spike before the input layer's t_min acts from t_min on.

    Only ``exact`` produces values above the window (``sparse`` clamps when it encodes).
    """
    pred = net.layers[layer.inputs[0]]
    b_in = net.window_length(pred)
    value = values[pred.name].clamp(0.0, b_in) if net.variant == "exact" else values[pred.name]
    return value.reshape(-1, *pred.shape), b_in


def _sparse_layer(net: TTFSNetwork, layer: Layer, values: dict[str, torch.Tensor]):
    xin, _ = _clamped_input(net, layer, values)
    b = net.window_length(layer)
    y = synaptic_input(layer, xin, _t(layer.arrays["weight"]))
    y.sub_(_t(layer.arrays["threshold"])).add_(b)  # b - (theta - V(t_min))
    clipped = y > b
    return y.clamp_(0.0, b), clipped


def _exact_layer(net: TTFSNetwork, layer: Layer, values: dict[str, torch.Tensor]):
    xin, b_in = _clamped_input(net, layer, values)
    b = net.window_length(layer)
    weight = _t(layer.arrays["weight"])
    threshold = _t(layer.arrays["threshold"])
    v_end = b_in + synaptic_input(layer, xin, weight)
    margin = threshold - v_end
    value = b - margin / (1.0 + weight_sum(layer, weight))
    clipped = value > b
    value.clamp_(min=0.0)

    negative = weight.clamp(max=0.0)
    negative_sum = -weight_sum(layer, negative)
    rise = -synaptic_input(layer, xin, negative) * (1.0 - 1.0 / negative_sum).clamp(min=0.0)
    candidates = clipped | (rise >= margin)
    early = torch.zeros_like(clipped)
    if candidates.any():
        index = candidates.nonzero(as_tuple=True)
        inputs, weights = _fan_in(layer, xin, weight, index)
        crossing = first_crossing(inputs, weights, threshold.expand_as(value)[index], b_in)
        before = crossing < b_in
        early[index] = before & ~clipped[index]
        value[index] = torch.where(before, b_in + b - crossing, value[index])
    return value, clipped, early


def _fan_in(layer: Layer, xin: torch.Tensor, weight: torch.Tensor, index: tuple[torch.Tensor, ...]):
    """Input values and weights of the neurons ``index`` (sample first), as ``(K, fan_in)`` arrays."""
    sample, neuron = index[0], index[1:]
    if layer.kind == "linear":
        return xin.reshape(xin.shape[0], -1)[sample], weight[neuron[0]]
    channel, row, col = neuron
    kernel = weight.shape[2:]
    attrs = conv_attrs(layer.attrs)
    groups = attrs["groups"]
    used, local = torch.unique(sample, return_inverse=True)
    patches = F.unfold(xin[used], kernel, dilation=attrs["dilation"], padding=attrs["padding"],
                       stride=attrs["stride"])
    position = row * layer.shape[2] + col
    cols = patches[local, :, position].reshape(len(sample), groups, -1)
    group = channel // (weight.shape[0] // groups)
    return cols[torch.arange(len(sample)), group], weight[channel].reshape(len(sample), -1)


def first_crossing(inputs: torch.Tensor, weights: torch.Tensor, threshold: torch.Tensor, b_in: float) -> torch.Tensor:
    """First time in ``[0, b_in]`` (from the input window start) at which ``V >= threshold``; inf if none.

    ``dV/dt = 1 + sum_j w_j H(t - a_j)`` with arrivals ``a_j = b_in - x_j``; ``V`` is piecewise linear,
    so sorting the arrivals and accumulating slopes gives ``V`` at every breakpoint exactly.
    """
    out = torch.empty(inputs.shape[0], dtype=torch.float64)
    step = max(1, CROSSING_CHUNK // max(1, inputs.shape[1]))
    for lo in range(0, inputs.shape[0], step):
        sl = slice(lo, lo + step)
        out[sl] = _first_crossing_chunk(inputs[sl], weights[sl], threshold[sl], b_in)
    return out


def _first_crossing_chunk(inputs, weights, threshold, b_in):
    arrival, order = torch.sort(b_in - inputs, dim=1)
    w_sorted = torch.gather(weights, 1, order)
    k = inputs.shape[0]
    starts = torch.cat([torch.zeros(k, 1, dtype=torch.float64), arrival], dim=1)
    ends = torch.cat([arrival, torch.full((k, 1), b_in, dtype=torch.float64)], dim=1)
    slopes = torch.cat([torch.ones(k, 1, dtype=torch.float64), 1.0 + torch.cumsum(w_sorted, dim=1)], dim=1)
    v_end = torch.cumsum(slopes * (ends - starts), dim=1)
    v_start = v_end - slopes * (ends - starts)
    hit = v_end >= threshold[:, None]
    first = hit.to(torch.int8).argmax(dim=1, keepdim=True)
    seg_start, seg_v, seg_slope = (torch.gather(a, 1, first)[:, 0] for a in (starts, v_start, slopes))
    already = seg_v >= threshold
    t = torch.where(already, seg_start, seg_start + (threshold - seg_v) / torch.where(already, 1.0, seg_slope))
    return torch.where(hit.any(dim=1), t, torch.inf)


def _output(net: TTFSNetwork, layer: Layer, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Membrane potentials at the output layer's t_min: the logits."""
    xin, b_in = _clamped_input(net, layer, values)
    potential = synaptic_input(layer, xin, _t(layer.arrays["weight"]))
    if net.variant == "exact":
        return _t(layer.arrays["drive"]) * b_in + potential
    return potential + _t(layer.arrays["bias"])
