"""The ReLU graph: the torch model as float64 NumPy operations, before it becomes spiking layers.

:mod:`ttfs_brian.capture` builds it from a torch model, :mod:`ttfs_brian.passes` rewrites it
(each pass a pure function ``graph -> graph`` that keeps :func:`forward` unchanged), and
:mod:`ttfs_brian.convert` turns the rewritten graph into a :class:`~ttfs_brian.network.TTFSNetwork`.

Op kinds and their params (per-sample shapes):

- ``input``: the network input.
- ``linear``: ``weight (out, in)``, ``bias (out,)``; the input is flattened first.
- ``conv``: ``weight (C_out, C_in/groups, kh, kw)``, ``bias`` a map ``(C_out, H, W)``;
  attrs ``stride``, ``padding``, ``dilation``, ``groups`` (zero padding).
- ``affine``: ``scale``, ``shift`` of the op's shape: ``y = scale * x + shift`` (BatchNorm, input map).
- ``relu``; ``flatten``.
- ``maxpool``: ``sign (C,)``: +1 max, -1 min; attrs as ``torch.nn.MaxPool2d``.
- ``avgpool``: attrs as ``torch.nn.AvgPool2d``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConversionError


@dataclass(frozen=True)
class Op:
    """One operation of the ReLU graph.

    ``aliases`` are the names the user knows the op by (qualified module name or torch.fx node
    name); ``source`` is the torch.fx node whose output this op's output equals in the original
    model (used to fetch reference activations).
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    source: str | None = None

    def with_params(self, **params: np.ndarray) -> "Op":
        return replace(self, params={**self.params, **params})


Graph = list[Op]
"""Ops in topological order; every op names its inputs."""


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def conv_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {key: attrs[key] for key in ("stride", "padding", "dilation", "groups")}


def apply_op(op: Op, x: torch.Tensor) -> torch.Tensor:
    """Evaluate one op on a batch ``x`` of shape ``(N, *input_shape)`` in float64."""
    kind = op.kind
    if kind == "input":
        return x
    if kind == "relu":
        return torch.relu(x)
    if kind == "flatten":
        return x.reshape(x.shape[0], -1)
    if kind == "affine":
        return x * _t(op.params["scale"]) + _t(op.params["shift"])
    if kind == "linear":
        return x.reshape(x.shape[0], -1) @ _t(op.params["weight"]).T + _t(op.params["bias"])
    if kind == "conv":
        return F.conv2d(x, _t(op.params["weight"]), **conv_attrs(op.attrs)) + _t(op.params["bias"])
    if kind == "maxpool":
        return signed_max_pool(x, op.params["sign"], op.attrs)
    if kind == "avgpool":
        return F.avg_pool2d(x, **op.attrs)
    raise ConversionError(f"unknown op kind {kind!r} in op {op.name!r}")


def signed_max_pool(x: torch.Tensor, sign: np.ndarray, attrs: dict[str, Any]) -> torch.Tensor:
    """Max pooling for channels with sign +1 and min pooling for channels with sign -1."""
    sign_t = _t(sign).reshape(1, -1, 1, 1)
    maxima = F.max_pool2d(x, **attrs)
    if np.all(np.asarray(sign) > 0):
        return maxima
    minima = -F.max_pool2d(-x, **attrs)
    return torch.where(sign_t > 0, maxima, minima)


def forward(graph: Graph, x: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """Run the graph on a batch; returns every op's output by op name."""
    x = _t(x) if not isinstance(x, torch.Tensor) else x.to(torch.float64)
    values: dict[str, torch.Tensor] = {}
    for op in graph:
        inp = x if op.kind == "input" else values[op.inputs[0]]
        values[op.name] = apply_op(op, inp)
    return values


def output_op(graph: Graph) -> Op:
    """The last Linear/Conv of the graph: the layer that produces the logits."""
    cores = [op for op in graph if op.kind in ("linear", "conv")]
    if not cores:
        raise ConversionError("the model has no Linear or Conv2d layer to produce the logits")
    return cores[-1]


def per_channel(array: np.ndarray, what: str) -> np.ndarray:
    """The per-channel values of a ``(C, H, W)`` array that must be constant over space."""
    array = np.asarray(array, dtype=np.float64)
    flat = array.reshape(array.shape[0], -1)
    if not np.allclose(flat, flat[:, :1], rtol=0, atol=1e-12 * max(1.0, float(np.abs(flat).max(initial=0)))):
        raise ConversionError(
            f"{what} varies across positions within a channel; only per-channel maps can be "
            "folded into a convolution or pushed through pooling"
        )
    return flat[:, 0].copy()
