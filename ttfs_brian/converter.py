"""torch model -> :class:`~ttfs_brian.network.TTFSNetwork`: capture, fold, lower, rescale, calibrate, time.

``capture`` (torch.fx) gives the ReLU graph; the graph passes fold the input range and BatchNorm;
``lower`` turns it into populations and projections; ``rescale_weights`` (variant ``exact``) bounds
the weight sums; the calibration data give each population's window; :func:`build_network` sets the
windows, the delays of SPEC section 7 and each variant's weights and thresholds.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

from . import passes
from .capture import capture, record_activations
from .errors import ConversionError, InputError
from .lowering import forward, lower
from .network import VARIANTS, Layer, TTFSNetwork
from .projection import Projection, channel_values, weight_sum
from .validation import as_float64_array, finite

log = logging.getLogger(__name__)

DEAD_LAYER_WINDOW = 1e-3
"""Window length (units of tau_c) given to a layer that never fired on the calibration set."""

CALIBRATION_BATCH = 512


def convert(model: nn.Module, calibration: np.ndarray | torch.Tensor, *, variant: str = "exact",
            zeta: float = 0.5, tau_c: float = 1.0, input_range: tuple[float | np.ndarray, float | np.ndarray] | None = None,
            dt: float | None = None, s_max: float = 0.99, s_min: float = -10.0, delay_ms: float = 0.0) -> TTFSNetwork:
    """Convert a trained ReLU network into an exact single-spike TTFS network.

    Parameters
    ----------
    model:
        A ``torch.nn.Module`` whose forward is a graph of supported operations (traced with torch.fx):
        chains, residual additions followed by a ReLU, channel concatenations.
    calibration:
        Representative inputs ``(N, ...)``. Each layer's window is ``B = (1 + zeta) * X`` with ``X`` its
        largest activation over this set; the input bounds come from it unless ``input_range`` is given.
    variant:
        ``"exact"`` (the paper's neuron: every neuron spikes once) or ``"sparse"`` (zero = silence).
    zeta:
        Window margin (``> -1``); a negative margin clips the largest activations (counted and flagged).
    tau_c:
        Time constant in ms: a value ``x`` is the spike time ``t_max - x * tau_c``.
    input_range:
        ``(low, high)``: scalars, or arrays broadcastable to the input shape (per-channel for a first
        convolution), mapped affinely onto [0, 1].
    dt:
        If given (ms), every window boundary (and ``delay_ms``) is aligned up to a multiple of ``dt``.
    s_max, s_min:
        Bounds on the weight sums of ``exact``'s weight preprocessing.
    delay_ms:
        A uniform transmission (axonal) delay of every projection; each layer's window moves later by it
        and the mapping stays exact.
    """
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    zeta = finite(zeta, "zeta (window margin)", low=-1.0, low_open=True)
    tau_c = finite(tau_c, "tau_c (ms)", low=0.0, low_open=True)
    dt = None if dt is None else finite(dt, "dt (ms)", low=0.0, low_open=True)
    s_max = finite(s_max, "s_max", low=0.0, high=1.0, low_open=True)
    s_min = finite(s_min, "s_min")
    delay_ms = finite(delay_ms, "delay_ms", low=0.0)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ConversionError(f"model parameter '{name}' contains NaN or Inf; the model cannot be converted")
    data = as_float64_array(calibration, "calibration data")
    if data.ndim < 2 or data.shape[0] == 0:
        raise InputError(f"calibration data must have shape (N, ...) with N >= 1, got {data.shape}")
    low, high = _input_bounds(data, input_range)

    graph = capture(model, torch.as_tensor(np.concatenate([data[:2], data[:2]])[:2]))
    graph = passes.insert_input_affine(graph, low, high)
    graph = passes.fold_affines(graph)
    graph = passes.adaptive_to_avgpool(graph)
    graph = passes.avgpool_to_conv(graph)
    lowered = lower(graph)
    layers = lowered.layers
    if variant == "exact":
        layers, scales = passes.rescale_weights(layers, s_max=s_max, s_min=s_min)
    else:
        scales = {}
    u = np.clip((data - low) / (high - low), 0.0, 1.0)
    _check_lowering(model, layers, data[:64], u[:64])
    maxima = calibrate(layers, u)
    net = build_network(layers, variant=variant, maxima=maxima, scales=scales, zeta=zeta, tau_c=tau_c, dt=dt,
                        low=low, high=high, delay_ms=delay_ms)
    net.composites = lowered.composites
    net.meta.update({"zeta": zeta, "s_max": s_max, "s_min": s_min, "calibration_samples": int(data.shape[0]),
                     "model": type(model).__name__})
    log.info("converted %s (%s): %d layers", type(model).__name__, variant, len(net.layers))
    return net


def _input_bounds(data: np.ndarray, input_range) -> tuple[np.ndarray, np.ndarray]:
    shape = data.shape[1:]
    if input_range is None:
        low, high = np.asarray(data.min()), np.asarray(data.max())
        if not high > low:
            raise InputError("calibration inputs are constant; pass input_range=(low, high) explicitly")
        return low, high
    if len(input_range) != 2:
        raise InputError("input_range must be a pair (low, high)")
    low, high = (as_float64_array(v, "input_range") for v in input_range)
    try:
        gap = np.broadcast_to(high - low, shape)
    except ValueError as exc:
        raise InputError(f"input_range bounds of shapes {low.shape}, {high.shape} do not broadcast to the input "
                         f"shape {shape}") from exc
    if not np.all(gap > 0):
        raise InputError("input_range needs high > low everywhere")
    return low, high


def _check_lowering(model: nn.Module, layers: dict[str, Layer], x: np.ndarray, u: np.ndarray) -> None:
    """The populations must compute the model's logits; anything else is a converter bug, not a user error."""
    expected, _ = record_activations(model, torch.as_tensor(x), set())
    output = next(reversed(layers))
    got = forward(layers, u)[output].reshape(expected.shape)
    err = float((got - expected).abs().max())
    if err > 1e-9 * max(1.0, float(expected.abs().max())):
        raise ConversionError(f"internal error: the converted populations differ from the model by {err:.3g}")


def calibrate(layers: dict[str, Layer], u: np.ndarray) -> dict[str, float]:
    """Largest value of every population over the calibration inputs ``u`` (already mapped to [0, 1])."""
    maxima: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, u.shape[0], CALIBRATION_BATCH):
            for name, value in forward(layers, u[start:start + CALIBRATION_BATCH]).items():
                maxima[name] = max(maxima.get(name, -math.inf), float(value.max()))
    return maxima


def _aligner(dt: float | None):
    def align(t: float) -> float:
        if dt is None:
            return t
        return round(math.ceil(t / dt - 1e-9)) * dt
    return align


def build_network(layers: dict[str, Layer], *, variant: str, maxima: dict[str, float], scales: dict[str, np.ndarray],
                  zeta: float, tau_c: float, dt: float | None, low: np.ndarray, high: np.ndarray,
                  delay_ms: float = 0.0) -> TTFSNetwork:
    """The timed network: windows from ``maxima``, delays (SPEC section 7), then ``J`` and ``theta`` per variant.

    A layer ``n`` with sources ``s`` starts its window at ``t_min(n) = max_s t_max(s) + D``; the projection
    from ``s`` is delayed by ``t_min(n) - t_max(s)``. ``exact`` (SPEC sections 3, 7): ``J = W / (1 - S)``
    with ``S`` the weight sum over all projections, ``theta = (t_max(n) - t_0) + sum J (t_max(n) - t_min(n))
    - (1 + sum J) b`` (times in units of tau_c; ``t_0 = t_min(n) - max_s B(s)``); ``sparse``:
    ``theta = B(n) - b``.
    """
    align = _aligner(dt)
    delay = align(delay_ms) if delay_ms else 0.0
    out: dict[str, Layer] = {}
    for layer in layers.values():
        if layer.kind == "input":
            out["input"] = Layer("input", "input", layer.shape, 0.0, align(tau_c), aliases=layer.aliases,
                                 arrays={"low": np.asarray(low, dtype=np.float64),
                                         "high": np.asarray(high, dtype=np.float64)})
            continue
        sources = [out[p.source] for p in layer.projections]
        if layer.kind == "maxpool":
            source = sources[0]
            out[layer.name] = Layer(layer.name, "maxpool", layer.shape, source.t_min + delay, source.t_max + delay,
                                    (replace(layer.projections[0], delay=delay),), layer.aliases, layer.attrs,
                                    {**layer.arrays, "scale": scales.get(layer.name, np.ones(layer.shape))})
            continue
        t_min = max(s.t_max for s in sources) + delay
        projections = [replace(p, delay=t_min - s.t_max) for p, s in zip(layer.projections, sources)]
        b_in = max((t_min - p.delay - s.t_min) / tau_c for p, s in zip(projections, sources))
        bias = np.asarray(layer.arrays["bias"], dtype=np.float64)
        if layer.kind == "output":
            arrays = {"bias": bias.copy()}
            if variant == "exact":
                arrays["drive"] = bias / b_in
            out[layer.name] = Layer(layer.name, "output", layer.shape, t_min, t_min, tuple(projections),
                                    layer.aliases, layer.attrs, arrays)
            continue
        maximum = maxima[layer.name]
        if maximum <= 0:
            log.warning("layer %s never fired on the calibration set (maximum %g); giving it a minimal window",
                        layer.name, maximum)
        t_max = align(t_min + max((1 + zeta) * maximum, DEAD_LAYER_WINDOW) * tau_c)
        b = (t_max - t_min) / tau_c
        if variant == "exact":
            row_sum = sum(weight_sum(p, layer.shape) for p in projections)
            if np.any(row_sum >= 1):
                raise ConversionError(f"layer {layer.name}: weight sums must be < 1 after preprocessing")
            projections = [p.with_weight(p.weight / _per_target(1 - row_sum, p)) for p in projections]
            sum_j = row_sum / (1 - row_sum)
            threshold = (b_in + b) + b * sum_j - (1 + sum_j) * bias
        else:
            threshold = b - bias
        out[layer.name] = Layer(layer.name, "neuron", layer.shape, t_min, t_max, tuple(projections), layer.aliases,
                                layer.attrs, {"bias": bias.copy(), "threshold": np.asarray(threshold, dtype=np.float64),
                                              "scale": scales.get(layer.name, np.ones(layer.shape))})
    output = next(reversed(out))
    return TTFSNetwork(variant=variant, tau_c=tau_c, layers=out, output=output, dt=dt, meta={"delay_ms": delay})


def _per_target(values: np.ndarray, proj: Projection) -> np.ndarray:
    """Per-target-neuron ``values`` shaped to divide the projection's weight row by row."""
    if proj.kind == "dense":
        return values.reshape(-1, 1)
    if proj.kind == "identity":
        return values
    return channel_values(values, "1 - S of a convolution's target").reshape(-1, 1, 1, 1)
