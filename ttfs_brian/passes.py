"""Graph rewrites on the ReLU graph. Each pass is a pure function ``Graph -> Graph`` that leaves
:func:`ttfs_brian.graph.forward` unchanged on the final output (``rescale_weights`` also changes
the hidden activations, by known positive per-neuron factors).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConversionError
from .graph import Graph, Op, conv_attrs, output_op, per_channel


def insert_input_affine(graph: Graph, low: np.ndarray, high: np.ndarray) -> Graph:
    """Prepend the map ``x = low + (high - low) * u`` so that the graph takes ``u`` in [0, 1].

    ``low`` and ``high`` broadcast to the input shape. Together with :func:`fold_affines` this
    folds the input range into the first layer, bias map included.
    """
    source = graph[0]
    if source.kind != "input":
        raise ConversionError("the graph does not start with its input")
    shape = source.shape
    low = np.broadcast_to(np.asarray(low, dtype=np.float64), shape)
    high = np.broadcast_to(np.asarray(high, dtype=np.float64), shape)
    affine = Op("input_affine", "affine", (source.name,), shape,
                {"scale": (high - low).copy(), "shift": low.copy()})
    rest = [replace(op, inputs=("input_affine",)) if op.inputs == (source.name,) else op for op in graph[1:]]
    return [source, affine, *rest]


def fold_affines(graph: Graph) -> Graph:
    """Remove every ``affine`` op (BatchNorm, input map) by folding it into a Linear/Conv.

    An affine directly after a Linear/Conv (BatchNorm before ReLU) scales that layer's rows.
    An affine after a ReLU or pool is carried forward, through Flatten, MaxPool2d (a negative
    scale turns the max into a min: ``max(g*x + b) = g*min(x) + b`` for ``g < 0``) and AvgPool2d,
    into the next Linear/Conv, where the shift becomes a bias map: the layer applied, without
    bias, to the zero-padded shift image (exact at padded borders).
    """
    out: Graph = []
    pending: tuple[np.ndarray, np.ndarray] | None = None
    core: int | None = None  # index in `out` of a Linear/Conv whose output has not passed a ReLU yet

    def rename_input(op: Op) -> Op:
        return replace(op, inputs=(out[-1].name,))

    for op in graph:
        if op.kind == "input":
            out.append(op)
            continue
        if op.kind == "affine":
            scale, shift = op.params["scale"], op.params["shift"]
            if core is not None:
                out[core] = _fold_into_rows(out[core], scale.reshape(out[core].shape), shift.reshape(out[core].shape),
                                            op.name)
                out[core] = replace(out[core], aliases=out[core].aliases + op.aliases, source=op.source)
            elif pending is None:
                pending = (scale, shift)
            else:
                pending = (scale * pending[0], scale * pending[1] + shift)
            continue
        pending = None if pending is not None and _is_identity(*pending) else pending
        if op.kind == "flatten":
            if pending is not None:
                pending = (pending[0].reshape(op.shape), pending[1].reshape(op.shape))
            out.append(rename_input(op))
        elif op.kind == "relu":
            if pending is not None:
                raise ConversionError(
                    f"ReLU '{op.name}' follows a BatchNorm or affine map applied to non-negative values with no "
                    "Linear/Conv in between; this cannot be folded. Move the BatchNorm before the ReLU."
                )
            core = None
            out.append(rename_input(op))
        elif op.kind == "maxpool":
            core = None
            if pending is not None:
                scale_c = per_channel(pending[0], f"the affine map before MaxPool2d '{op.name}'")
                shift_c = per_channel(pending[1], f"the shift before MaxPool2d '{op.name}'")
                op = op.with_params(sign=np.where(scale_c < 0, -1.0, 1.0) * op.params["sign"])
                pending = _broadcast_channels(scale_c, shift_c, op.shape)
            out.append(rename_input(op))
        elif op.kind == "avgpool":
            if core is not None:
                raise ConversionError(
                    f"AvgPool2d '{op.name}' directly follows Linear/Conv '{out[core].name}' without a ReLU; "
                    "put the ReLU before the pool"
                )
            if pending is not None:
                scale_c = per_channel(pending[0], f"the affine map before AvgPool2d '{op.name}'")
                shift_map = F.avg_pool2d(torch.as_tensor(pending[1])[None], **op.attrs)[0].numpy()
                pending = (np.broadcast_to(scale_c[:, None, None], op.shape).copy(), shift_map)
            out.append(rename_input(op))
        elif op.kind in ("linear", "conv"):
            if core is not None:
                raise ConversionError(
                    f"'{out[core].name}' and '{op.name}' are two Linear/Conv layers without a ReLU between them; "
                    "merge them or insert a ReLU"
                )
            if pending is not None:
                op = _fold_into_columns(op, out[-1].shape, *pending)
                pending = None
            out.append(rename_input(op))
            core = len(out) - 1
        else:
            raise ConversionError(f"fold_affines does not know op kind {op.kind!r} ('{op.name}')")
    if pending is not None and not _is_identity(*pending):
        raise ConversionError("the model ends with a BatchNorm/affine map after a ReLU or pool; the logits must come "
                              "from a final Linear/Conv")
    if out[-1].kind not in ("linear", "conv", "flatten") or out[-1].kind == "flatten" and core is None:
        raise ConversionError(
            f"the model's output comes from '{out[-1].name}' ({out[-1].kind}); the converter needs the logits of a "
            "final Linear/Conv (remove a trailing ReLU or pool)"
        )
    return out


def _is_identity(scale: np.ndarray, shift: np.ndarray) -> bool:
    return bool(np.all(scale == 1.0) and np.all(shift == 0.0))


def _broadcast_channels(scale_c: np.ndarray, shift_c: np.ndarray, shape: tuple[int, ...]):
    expand = (slice(None),) + (None,) * (len(shape) - 1)
    return (np.broadcast_to(scale_c[expand], shape).copy(), np.broadcast_to(shift_c[expand], shape).copy())


def _fold_into_rows(core: Op, scale: np.ndarray, shift: np.ndarray, what: str) -> Op:
    """``y -> scale * y + shift`` applied to the output of a Linear/Conv."""
    weight, bias = core.params["weight"], core.params["bias"]
    if core.kind == "linear":
        return core.with_params(weight=scale[:, None] * weight, bias=scale * bias + shift)
    scale_c = per_channel(scale, f"the BatchNorm/affine '{what}' after Conv2d '{core.name}'")
    return core.with_params(weight=scale_c[:, None, None, None] * weight, bias=scale * bias + shift)


def _fold_into_columns(core: Op, in_shape: tuple[int, ...], scale: np.ndarray, shift: np.ndarray) -> Op:
    """Compose a Linear/Conv with a preceding ``x -> scale * x + shift``."""
    weight, bias = core.params["weight"], core.params["bias"]
    if core.kind == "linear":
        return core.with_params(weight=weight * scale.reshape(1, -1), bias=bias + weight @ shift.reshape(-1))
    scale_c = per_channel(scale.reshape(in_shape), f"the affine map before Conv2d '{core.name}'")
    bias_map = F.conv2d(torch.as_tensor(shift.reshape(in_shape))[None], torch.as_tensor(weight),
                        **conv_attrs(core.attrs))[0].numpy()
    return core.with_params(weight=weight * _input_channel_factor(scale_c, weight.shape, core.attrs["groups"]),
                            bias=bias + bias_map)


def _input_channel_factor(per_input_channel: np.ndarray, weight_shape: tuple[int, ...], groups: int) -> np.ndarray:
    """Broadcastable ``(C_out, C_in/groups, 1, 1)`` array: the factor of each weight's input channel."""
    c_out, c_in_group = weight_shape[0], weight_shape[1]
    group = np.arange(c_out) // (c_out // groups)
    channel = group[:, None] * c_in_group + np.arange(c_in_group)[None, :]
    return per_input_channel[channel][:, :, None, None]


def avgpool_to_conv(graph: Graph) -> Graph:
    """Turn each AvgPool2d into a spiking depthwise convolution followed by a (no-op) ReLU.

    After :func:`fold_affines` an AvgPool2d always acts on non-negative values, so the ReLU
    changes nothing and the pooled values get their own spike window.
    """
    out: Graph = []
    renamed: dict[str, str] = {}  # consumers of an AvgPool2d now consume its ReLU
    for op in graph:
        if op.inputs and op.inputs[0] in renamed:
            op = replace(op, inputs=(renamed[op.inputs[0]],))
        if op.kind != "avgpool":
            out.append(op)
            continue
        channels = op.shape[0]
        kh, kw = op.attrs["kernel_size"]
        divisor = op.attrs["divisor_override"] or kh * kw
        weight = np.full((channels, 1, kh, kw), 1.0 / divisor)
        attrs = {"stride": op.attrs["stride"], "padding": op.attrs["padding"], "dilation": (1, 1),
                 "groups": channels, "avgpool": op.attrs}
        conv = Op(op.name, "conv", op.inputs, op.shape, {"weight": weight, "bias": np.zeros(op.shape)}, attrs,
                  op.aliases, op.source)
        relu = Op(f"{op.name}.relu", "relu", (op.name,), op.shape, aliases=op.aliases, source=op.source)
        renamed[op.name] = relu.name
        out.extend([conv, relu])
    return out


def rescale_weights(graph: Graph, s_max: float = 0.99, s_min: float = -10.0) -> tuple[Graph, dict[str, np.ndarray]]:
    """Bring every hidden neuron's weight sum ``S_i`` into ``[s_min, s_max]`` without changing the logits.

    Uses the positive homogeneity of ReLU, front to back: a neuron with ``S_i > s_max`` gets its
    incoming weights and bias scaled by ``c = s_max / S_i`` (``c = s_min / S_i`` when ``S_i < s_min``),
    and the next layer's weights from it by ``1 / c``. For a convolution the sum runs over the kernel
    and the input channels, so ``c`` is per output channel and pooling stays exact.

    Returns the rescaled graph and, for every op after the input, the per-element factor by which
    its output values were scaled (the ``scale`` of the converted network).
    """
    if not s_min < 0 < s_max < 1:
        raise ConversionError(f"weight bounds must satisfy s_min < 0 < s_max < 1 (got s_min={s_min}, s_max={s_max})")
    last = output_op(graph).name
    factor = np.ones(graph[0].shape)  # scale of the values flowing along the chain
    out: Graph = []
    scales: dict[str, np.ndarray] = {}
    for op in graph:
        if op.kind in ("linear", "conv"):
            op = _fold_into_columns(op, factor.shape, 1.0 / factor, np.zeros(factor.shape))
            if op.name != last:
                row_sum = op.params["weight"].reshape(op.params["weight"].shape[0], -1).sum(axis=1)
                c = np.ones_like(row_sum)
                c = np.where(row_sum > s_max, s_max / np.where(row_sum == 0, 1, row_sum), c)
                c = np.where(row_sum < s_min, s_min / np.where(row_sum == 0, 1, row_sum), c)
                expand = (slice(None),) + (None,) * (len(op.shape) - 1)
                c_map = np.broadcast_to(c[expand], op.shape).copy()
                op = _fold_into_rows(op, c_map, np.zeros(op.shape), "weight rescaling")
                factor = c_map
            else:
                factor = np.ones(op.shape)
        elif op.kind == "maxpool":
            factor = np.broadcast_to(per_channel(factor, "scale")[:, None, None], op.shape).copy()
        elif op.kind == "flatten":
            factor = factor.reshape(op.shape)
        elif op.kind == "avgpool":
            raise ConversionError("run avgpool_to_conv before rescale_weights")
        out.append(op)
        if op.kind != "input":
            scales[op.name] = factor
    return out, scales
