"""Rewrites of the ReLU graph and of the populations. Each pass is a small pure function that leaves the
network function unchanged (``rescale_weights`` also scales the hidden activations, by known positive
per-neuron factors).

On the ReLU graph (:mod:`ttfs_brian.graph`), before :func:`ttfs_brian.lowering.lower`:
:func:`insert_input_affine`, :func:`fold_affines`, :func:`adaptive_to_avgpool`, :func:`avgpool_to_conv`.
On the populations (:mod:`ttfs_brian.lowering`), after it: :func:`rescale_weights`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from . import projection as pj
from .errors import ConversionError
from .graph import Graph, Op, apply_op, consumers, conv_attrs
from .network import Layer


def insert_input_affine(graph: Graph, low: np.ndarray, high: np.ndarray) -> Graph:
    """Prepend the map ``x = low + (high - low) * u`` so that the graph takes ``u`` in [0, 1].

    ``low`` and ``high`` broadcast to the input shape. With :func:`fold_affines` this folds the
    input range into the first layer, bias map included.
    """
    source = graph[0]
    if source.kind != "input":
        raise ConversionError("the graph does not start with its input")
    shape = source.shape
    low = np.broadcast_to(np.asarray(low, dtype=np.float64), shape)
    high = np.broadcast_to(np.asarray(high, dtype=np.float64), shape)
    affine = Op("input_affine", "affine", (source.name,), shape, {"scale": (high - low).copy(), "shift": low.copy()})
    return [source, affine, *(_rename_inputs(op, {source.name: affine.name}) for op in graph[1:])]


def _rename_inputs(op: Op, renamed: dict[str, str]) -> Op:
    if not any(name in renamed for name in op.inputs):
        return op
    return replace(op, inputs=tuple(renamed.get(name, name) for name in op.inputs))


def fold_affines(graph: Graph) -> Graph:
    """Fold every affine map (BatchNorm, the input map) into a neighbouring Linear/Conv where that is exact.

    Repeated until nothing changes: an affine right after a Linear/Conv that feeds nothing else scales
    that layer's rows; an affine whose only consumer is a pool (max: a negative scale turns the max
    into a min, ``max(g x + b) = g min(x) + b``), an average pool or a flatten moves after it; an
    affine whose only consumer is a Linear/Conv becomes its columns and a bias map (the layer applied,
    without bias, to the zero-padded shift image: exact at padded borders); consecutive affines
    merge; an affine feeding several ops is split into one per consumer first. Affines left (before a
    ReLU, an addition or a concatenation) become weighted identity projections in the lowering.
    """
    graph = _split_shared_affines(graph)
    while True:
        rewritten = _fold_once(graph)
        if rewritten is graph:
            return graph
        graph = _split_shared_affines(rewritten)


def _split_shared_affines(graph: Graph) -> Graph:
    users = consumers(graph)
    out: Graph = []
    renamed: dict[str, dict[str, str]] = {}  # consumer -> {affine: its own copy}
    for op in graph:
        op = _rename_inputs(op, renamed.get(op.name, {}))
        out.append(op)
        if op.kind == "affine" and len(users[op.name]) > 1:
            for k, user in enumerate(users[op.name][1:], start=1):
                copy = replace(op, name=f"{op.name}@{k}")
                out.append(copy)
                renamed.setdefault(user.name, {})[op.name] = copy.name
    return out


def _fold_once(graph: Graph) -> Graph:
    users = consumers(graph)
    by_name = {op.name: op for op in graph}
    for op in graph:
        if op.kind != "affine" or len(users[op.name]) != 1:
            continue
        source, (user,) = by_name[op.inputs[0]], users[op.name]
        scale, shift = op.params["scale"], op.params["shift"]
        if source.kind in ("linear", "conv") and len(users[source.name]) == 1:
            folded = replace(_fold_rows(source, scale, shift, op.describe()), name=op.name, aliases=source.aliases + op.aliases,
                             source=op.source)
            return _replace(graph, {source.name: None, op.name: folded})
        if source.kind == "affine" and len(users[source.name]) == 1:
            merged = replace(op, inputs=source.inputs, params={"scale": scale * source.params["scale"],
                                                               "shift": scale * source.params["shift"] + shift})
            return _replace(graph, {source.name: None, op.name: merged})
        if user.kind in ("linear", "conv"):
            folded = _rename_inputs(_fold_columns(user, op.shape, scale, shift), {op.name: op.inputs[0]})
            return _replace(graph, {op.name: None, user.name: folded})
        if user.kind in ("maxpool", "avgpool", "adaptive_avgpool", "flatten"):
            return _replace(graph, {op.name: None, user.name: list(_swap(op, user))})
    return graph


def _replace(graph: Graph, changes: dict[str, Op | list[Op] | None]) -> Graph:
    out: Graph = []
    for op in graph:
        change = changes.get(op.name, op)
        out.extend([] if change is None else change if isinstance(change, list) else [change])
    return out


def _swap(affine: Op, user: Op) -> tuple[Op, Op]:
    """``user(affine(x)) == affine'(user'(x))`` for a pool or flatten ``user``."""
    scale, shift = affine.params["scale"], affine.params["shift"]
    moved = replace(user, name=f"{user.name}@pre", inputs=affine.inputs)  # its consumers read the affine after it
    if user.kind == "flatten":
        new_scale, new_shift = scale.reshape(user.shape), shift.reshape(user.shape)
    else:
        scale_c = pj.channel_values(scale, f"the affine map before {user.describe()}")
        new_scale = np.broadcast_to(scale_c[:, None, None], user.shape).copy()
        if user.kind == "maxpool":
            shift_c = pj.channel_values(shift, f"the shift before {user.describe()}")
            moved = moved.with_params(sign=np.where(scale_c < 0, -1.0, 1.0) * user.params["sign"])
            new_shift = np.broadcast_to(shift_c[:, None, None], user.shape).copy()
        else:  # average pools are linear: the shift map is averaged too
            new_shift = apply_op(user, torch.as_tensor(shift)[None])[0].numpy()
    after = Op(user.name, "affine", (moved.name,), user.shape, {"scale": new_scale, "shift": new_shift},
               source=user.source)
    return moved, after


def _fold_rows(core: Op, scale: np.ndarray, shift: np.ndarray, what: str) -> Op:
    """``y -> scale * y + shift`` applied to the output of a Linear/Conv."""
    weight, bias = core.params["weight"], core.params["bias"]
    if core.kind == "linear":
        return core.with_params(weight=scale.reshape(-1, 1) * weight, bias=scale * bias + shift)
    scale_c = pj.channel_values(scale, f"{what} after {core.describe()}")
    return core.with_params(weight=scale_c[:, None, None, None] * weight, bias=scale * bias + shift)


def _fold_columns(core: Op, in_shape: tuple[int, ...], scale: np.ndarray, shift: np.ndarray) -> Op:
    """A Linear/Conv composed with a preceding ``x -> scale * x + shift``."""
    weight, bias = core.params["weight"], core.params["bias"]
    if core.kind == "linear":
        return core.with_params(weight=weight * scale.reshape(1, -1), bias=bias + weight @ shift.reshape(-1))
    attrs = conv_attrs(core.attrs)
    scale_c = pj.channel_values(scale.reshape(in_shape), f"the affine map before {core.describe()}")
    bias_map = F.conv2d(torch.as_tensor(shift.reshape(in_shape))[None], torch.as_tensor(weight), **attrs)[0].numpy()
    return core.with_params(weight=weight * pj.input_channel_factor(scale_c, weight.shape, attrs["groups"]),
                            bias=bias + bias_map)


def adaptive_to_avgpool(graph: Graph) -> Graph:
    """Adaptive average pooling whose output size divides its input size is an AvgPool2d (kernel = stride =
    the quotient): a spiking layer after :func:`avgpool_to_conv`. Other sizes are left to the lowering,
    which composes them into the Linear that follows."""
    shapes = {op.name: op.shape for op in graph}
    out: Graph = []
    for op in graph:
        if op.kind == "adaptive_avgpool":
            in_hw, out_hw = shapes[op.inputs[0]][1:], op.shape[1:]
            if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
                kernel = tuple(i // o for i, o in zip(in_hw, out_hw))
                op = replace(op, kind="avgpool", attrs={"kernel_size": kernel, "stride": kernel, "padding": (0, 0),
                                                        "divisor_override": None})
        out.append(op)
    return out


def avgpool_to_conv(graph: Graph) -> Graph:
    """Turn each AvgPool2d into a spiking depthwise convolution followed by a (no-op) ReLU.

    After :func:`fold_affines` an AvgPool2d acts on non-negative values (affines moved after it), so
    the ReLU changes nothing and the pooled values get their own spike window.
    """
    out: Graph = []
    renamed: dict[str, str] = {}  # consumers of an AvgPool2d now consume its ReLU
    for op in graph:
        op = _rename_inputs(op, renamed)
        if op.kind != "avgpool":
            out.append(op)
            continue
        channels = op.shape[0]
        kh, kw = op.attrs["kernel_size"]
        divisor = op.attrs["divisor_override"] or kh * kw
        weight = np.full((channels, 1, kh, kw), 1.0 / divisor)
        attrs = {"stride": op.attrs["stride"], "padding": op.attrs["padding"], "dilation": (1, 1),
                 "groups": channels, "avgpool": op.attrs}
        conv = Op(f"{op.name}.conv", "conv", op.inputs, op.shape, {"weight": weight, "bias": np.zeros(op.shape)},
                  attrs, (), op.source)
        relu = Op(op.name, "relu", (conv.name,), op.shape, aliases=op.aliases, source=op.source)
        renamed[op.name] = relu.name
        out.extend([conv, relu])
    return out


def rescale_weights(layers: dict[str, Layer], s_max: float = 0.99,
                    s_min: float = -10.0) -> tuple[dict[str, Layer], dict[str, np.ndarray]]:
    """Bring every hidden neuron's weight sum ``S_i`` into ``[s_min, s_max]`` without changing the logits.

    ``S_i`` sums the weights of *all* incoming projections (zero-padded taps included). By the positive
    homogeneity of ReLU, front to back: a neuron with ``S_i > s_max`` gets its incoming weights and bias
    scaled by ``c = s_max / S_i`` (``c = s_min / S_i`` when ``S_i < s_min``), and every outgoing
    projection (an identity shortcut too) by ``1 / c``. ``c`` is per channel for ``(C, H, W)``
    populations, so that convolutions and pools stay exact. Pools pass their source's factor on.

    Returns the rescaled populations and, per population, the factor by which its values were scaled.
    """
    if not s_min < 0 < s_max < 1:
        raise ConversionError(f"weight bounds must satisfy s_min < 0 < s_max < 1 (got s_min={s_min}, s_max={s_max})")
    factor: dict[str, np.ndarray] = {}
    out: dict[str, Layer] = {}
    for layer in layers.values():
        if layer.kind == "input":
            factor[layer.name] = np.ones(layer.shape)
            out[layer.name] = layer
            continue
        if layer.kind == "maxpool":
            source = layer.projections[0].source
            factor[layer.name] = np.broadcast_to(
                pj.channel_values(factor[source], "scale")[:, None, None], layer.shape).copy()
            out[layer.name] = layer
            continue
        projections = [pj.scale_columns(p, 1.0 / factor[p.source], layers[p.source].shape) for p in layer.projections]
        bias = layer.arrays["bias"]
        if layer.kind == "neuron":
            c = _rescale_factor(sum(pj.weight_sum(p, layer.shape) for p in projections), s_max, s_min, layer.name)
            projections = [pj.scale_rows(p, c, layer.shape) for p in projections]
            bias = c * bias
            factor[layer.name] = c
        out[layer.name] = replace(layer, projections=tuple(projections), arrays={**layer.arrays, "bias": bias})
    return out, {name: f for name, f in factor.items() if name != "input"}


def _rescale_factor(sums: np.ndarray, s_max: float, s_min: float, name: str) -> np.ndarray:
    """Per neuron (per channel for 3-D layers) positive ``c`` with ``c S`` inside ``[s_min, s_max]``."""
    if sums.ndim == 3:
        flat = sums.reshape(sums.shape[0], -1)
        high, low = flat.max(axis=1), flat.min(axis=1)
    else:
        high = low = sums
    c = np.ones_like(high)
    c = np.where(high > s_max, s_max / np.where(high > 0, high, 1.0), c)
    c = np.where(low * c < s_min, s_min / np.where(low < 0, low, -1.0), c)
    if np.any(high * c > s_max * (1 + 1e-12)):
        raise ConversionError(f"layer {name}: no positive factor brings every weight sum of a channel into "
                              f"[{s_min}, {s_max}]; the weight sums within a channel are too far apart")
    return np.broadcast_to(c.reshape(c.shape + (1,) * (sums.ndim - 1)), sums.shape).copy()
