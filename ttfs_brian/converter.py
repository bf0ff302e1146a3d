"""torch model -> :class:`~ttfs_brian.network.TTFSNetwork`: capture, fold, rescale, calibrate, build."""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from . import passes
from .capture import capture, record_activations
from .errors import ConversionError, InputError
from .graph import Graph, Op, forward, output_op
from .network import VARIANTS, Layer, TTFSNetwork
from .validation import as_float64_array, finite

log = logging.getLogger(__name__)

DEAD_LAYER_WINDOW = 1e-3
"""Window length (units of tau_c) given to a layer that never fired on the calibration set."""

CALIBRATION_BATCH = 512


def convert(model: nn.Module, calibration: np.ndarray | torch.Tensor, *, variant: str = "exact",
            zeta: float = 0.5, tau_c: float = 1.0, input_range: tuple[float | np.ndarray, float | np.ndarray] | None = None,
            dt: float | None = None, s_max: float = 0.99, s_min: float = -10.0) -> TTFSNetwork:
    """Convert a trained ReLU network into an exact single-spike TTFS network.

    Parameters
    ----------
    model:
        A ``torch.nn.Module`` whose forward is a chain of supported operations (traced with torch.fx).
    calibration:
        Representative inputs ``(N, ...)``. Each layer's window is ``B = (1 + zeta) * X`` with ``X`` its
        largest activation over this set; the input bounds come from it unless ``input_range`` is given.
    variant:
        ``"exact"`` (the paper's neuron: every neuron spikes once) or ``"sparse"`` (zero = silence).
    tau_c:
        Time constant in ms: a value ``x`` is the spike time ``t_max - x * tau_c``.
    input_range:
        ``(low, high)``: scalars, or arrays broadcastable to the input shape (per-channel for a first
        convolution), mapped affinely onto [0, 1].
    dt:
        If given (ms), every window boundary is aligned up to a multiple of ``dt``.
    s_max, s_min:
        Bounds on the weight sums of ``exact``'s weight preprocessing.
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
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ConversionError(f"model parameter '{name}' contains NaN or Inf; the model cannot be converted")
    data = as_float64_array(calibration, "calibration data")
    if data.ndim < 2 or data.shape[0] == 0:
        raise InputError(f"calibration data must have shape (N, ...) with N >= 1, got {data.shape}")
    low, high = _input_bounds(data, input_range)

    graph = capture(model, torch.as_tensor(np.concatenate([data[:2], data[:2]])[:2]))
    _check_capture(model, graph, data[:64])
    graph = passes.insert_input_affine(graph, low, high)
    graph = passes.fold_affines(graph)
    graph = passes.avgpool_to_conv(graph)
    if variant == "exact":
        graph, scales = passes.rescale_weights(graph, s_max=s_max, s_min=s_min)
    else:
        scales = {}
    u = np.clip((data - low) / (high - low), 0.0, 1.0)
    maxima = calibrate(graph, u)
    net = build_network(graph, variant=variant, maxima=maxima, scales=scales, zeta=zeta, tau_c=tau_c, dt=dt,
                        low=low, high=high)
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


def _check_capture(model: nn.Module, graph: Graph, sample: np.ndarray) -> None:
    """The captured graph must reproduce the model; anything else is a converter bug, not a user error."""
    expected, _ = record_activations(model, torch.as_tensor(sample), set())
    got = forward(graph, sample)[graph[-1].name].reshape(expected.shape)
    err = float((got - expected).abs().max())
    if err > 1e-9 * max(1.0, float(expected.abs().max())):
        raise ConversionError(f"internal error: the captured graph differs from the model by {err:.3g}")


def calibrate(graph: Graph, u: np.ndarray) -> dict[str, float]:
    """Largest output of every op over the calibration inputs ``u`` (already mapped to [0, 1])."""
    maxima: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, u.shape[0], CALIBRATION_BATCH):
            values = forward(graph, u[start:start + CALIBRATION_BATCH])
            for name, value in values.items():
                maxima[name] = max(maxima.get(name, -math.inf), float(value.max()))
    return maxima


def _aligner(dt: float | None):
    def align(t: float) -> float:
        if dt is None:
            return t
        return round(math.ceil(t / dt - 1e-9)) * dt
    return align


def build_network(graph: Graph, *, variant: str, maxima: dict[str, float], scales: dict[str, np.ndarray],
                  zeta: float, tau_c: float, dt: float | None, low: np.ndarray, high: np.ndarray) -> TTFSNetwork:
    """Spiking layers from a folded graph: windows from ``maxima``, then ``J`` and ``theta`` per variant."""
    align = _aligner(dt)
    last = output_op(graph).name
    source = graph[0]
    layers: dict[str, Layer] = {
        "input": Layer("input", "input", (), source.shape, 0.0, align(tau_c),
                       arrays={"low": np.asarray(low, dtype=np.float64), "high": np.asarray(high, dtype=np.float64)})
    }
    prev = "input"
    core: Op | None = None

    def close(core: Op, aliases: Sequence[str], maximum: float, reference: dict) -> str:
        pred = layers[prev]
        name = _unique(aliases[0] if aliases else core.name, layers)
        if maximum <= 0:
            log.warning("layer %s never fired on the calibration set (maximum %g); giving it a minimal window",
                        name, maximum)
        width = max((1 + zeta) * maximum, DEAD_LAYER_WINDOW) * tau_c
        t_min = pred.t_max
        t_max = align(t_min + width)
        b_in, b = (pred.t_max - pred.t_min) / tau_c, (t_max - t_min) / tau_c
        weight, bias = core.params["weight"], core.params["bias"]
        expand = (slice(None),) + (None,) * (len(core.shape) - 1)
        if variant == "exact":
            row_sum = weight.reshape(weight.shape[0], -1).sum(axis=1)
            if np.any(row_sum >= 1):
                raise ConversionError(f"layer {name}: weight sums must be < 1 after preprocessing")
            weight = weight / (1 - row_sum).reshape((-1,) + (1,) * (weight.ndim - 1))
            sum_j = np.broadcast_to((row_sum / (1 - row_sum))[expand], core.shape)
            threshold = (b_in + b) + b * sum_j - (1 + sum_j) * bias
        else:
            threshold = b - bias
        attrs = {key: core.attrs[key] for key in ("stride", "padding", "dilation", "groups", "avgpool")
                 if key in core.attrs}
        attrs["reference"] = reference
        layers[name] = Layer(name, core.kind, (prev,), core.shape, t_min, t_max, tuple(aliases), attrs,
                             {"weight": weight, "bias": np.asarray(bias, dtype=np.float64).copy(),
                              "threshold": np.asarray(threshold, dtype=np.float64).copy(),
                              "scale": scales.get(core.name, np.ones(core.shape))})
        return name

    for op in graph[1:]:
        if op.kind in ("linear", "conv"):
            core = op
            if op.name == last:
                break
        elif op.kind == "relu":
            if core is not None:
                reference = ({"from_input": "avgpool", **core.attrs["avgpool"]} if "avgpool" in core.attrs
                             else {"node": op.source, "relu": True})
                prev = close(core, op.aliases or (op.name,), maxima[op.name], reference)
                core = None
            else:
                layers[prev].aliases = tuple(dict.fromkeys(layers[prev].aliases + op.aliases))
        elif op.kind == "maxpool":
            if core is not None:
                prev = close(core, core.aliases or (core.name,), maxima[core.name],
                             {"node": core.source, "relu": True})
                core = None
            pred = layers[prev]
            name = _unique(op.aliases[0] if op.aliases else op.name, layers)
            layers[name] = Layer(name, "maxpool", (prev,), op.shape, pred.t_min, pred.t_max, op.aliases,
                                 {**op.attrs, "reference": {"from_input": "maxpool"}},
                                 {"sign": op.params["sign"], "scale": scales.get(op.name, np.ones(op.shape))})
            prev = name
    assert core is not None and core.name == last
    pred = layers[prev]
    b_in = (pred.t_max - pred.t_min) / tau_c
    arrays = {"weight": core.params["weight"], "bias": np.asarray(core.params["bias"], dtype=np.float64)}
    if variant == "exact":
        arrays["drive"] = arrays["bias"] / b_in
    attrs = {key: core.attrs[key] for key in ("stride", "padding", "dilation", "groups") if key in core.attrs}
    attrs.update(output=True, reference={"node": core.source, "relu": False})
    name = _unique(core.aliases[0] if core.aliases else core.name, layers)
    layers[name] = Layer(name, core.kind, (prev,), core.shape, pred.t_max, pred.t_max, core.aliases, attrs, arrays)
    return TTFSNetwork(variant=variant, tau_c=tau_c, layers=layers, output=name, dt=dt)


def _unique(name: str, layers: dict[str, Layer]) -> str:
    name = name.replace("/", ".")
    candidate, k = name, 1
    while candidate in layers:
        candidate, k = f"{name}_{k}", k + 1
    return candidate
