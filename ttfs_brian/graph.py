"""The ReLU graph: the torch model as float64 NumPy operations, before it becomes spiking layers.

A directed acyclic graph of ops in topological order. :mod:`ttfs_brian.capture` builds it from a
torch model, :mod:`ttfs_brian.passes` rewrites it (each pass a pure function ``graph -> graph``
that keeps :func:`forward` unchanged), and :mod:`ttfs_brian.lowering` turns it into populations
and projections.

Op kinds and their params (per-sample shapes):

- ``input``: the network input.
- ``linear``: ``weight (out, in)``, ``bias (out,)``; the input is flattened first.
- ``conv``: ``weight (C_out, C_in/groups, kh, kw)``, ``bias`` a map ``(C_out, H, W)``;
  attrs ``stride``, ``padding``, ``dilation``, ``groups`` (zero padding).
- ``affine``: ``scale``, ``shift`` of the op's shape: ``y = scale * x + shift`` (BatchNorm, input map).
- ``relu``; ``flatten``.
- ``maxpool``: ``sign (C,)``: +1 max, -1 min; attrs as ``torch.nn.MaxPool2d``.
- ``avgpool``: attrs as ``torch.nn.AvgPool2d``.
- ``adaptive_avgpool``: attrs ``output_size`` (as ``torch.nn.AdaptiveAvgPool2d``).
- ``add``: the sum of its inputs (same shapes); ``cat``: their concatenation along channels (dim 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConversionError
from .evaluate import signed_max_pool


@dataclass(frozen=True)
class Op:
    """One operation of the ReLU graph.

    ``aliases`` are the names the user knows the op by (qualified module name or torch.fx node
    name); ``source`` is the torch.fx node whose output this op's output equals in the original
    model (used to fetch reference activations); ``where`` says where the model computes it (the
    module path, for error messages).
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    source: str | None = None
    where: str = ""

    def describe(self) -> str:
        """The op as the user knows it: its module path and type, or the function and its module."""
        return self.where or f"'{self.name}'"

    def with_params(self, **params: np.ndarray) -> "Op":
        return replace(self, params={**self.params, **params})


Graph = list[Op]
"""Ops in topological order; every op names its inputs."""


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def conv_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {key: attrs[key] for key in ("stride", "padding", "dilation", "groups")}


def apply_op(op: Op, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """Evaluate one op on batches ``(N, *shape)`` of its inputs, in float64."""
    kind = op.kind
    if kind == "add":
        return sum(others, x)
    if kind == "cat":
        return torch.cat([x, *others], dim=1)
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
    if kind == "adaptive_avgpool":
        return F.adaptive_avg_pool2d(x, op.attrs["output_size"])
    raise ConversionError(f"unknown op kind {kind!r} in op {op.name!r}")


def forward(graph: Graph, x: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """Run the graph on a batch; returns every op's output by op name."""
    x = _t(x) if not isinstance(x, torch.Tensor) else x.to(torch.float64)
    values: dict[str, torch.Tensor] = {}
    for op in graph:
        args = [x] if op.kind == "input" else [values[name] for name in op.inputs]
        values[op.name] = apply_op(op, *args)
    return values


def consumers(graph: Graph) -> dict[str, list[Op]]:
    """Op name -> the ops that take its output as an input."""
    users: dict[str, list[Op]] = {op.name: [] for op in graph}
    for op in graph:
        for name in op.inputs:
            users[name].append(op)
    return users


def output_of(graph: Graph) -> Op:
    """The op whose value the model returns (the last op; capture puts it there)."""
    return graph[-1]
