"""Projections: the synapses from one source layer onto one target layer, and what they compute.

A projection maps the values ``x`` of its source (per-sample shape ``S``) to an input of every
neuron of its target (shape ``T``):

``dense``     ``y = W @ flatten(x)``; ``weight`` ``(prod(T), prod(S))``
``conv``      ``y = conv2d(x, W)`` with zero padding; ``weight`` ``(C_out, C_in / groups, kh, kw)``,
              ``attrs`` ``stride``, ``padding``, ``dilation``, ``groups``
``identity``  ``y_i = w_i x_{offset + i}`` (a shortcut; ``offset``, default 0, selects a block of the
              source's flat neurons, e.g. channels of a concatenation); ``weight`` of shape ``T``
``pool``      max (or, per channel of a target with ``sign = -1``, min) over the window; no
              weight; ``attrs`` as ``torch.nn.MaxPool2d``

Spikes of the source reach the target ``delay`` ms after they are emitted (SPEC section 7). This
module is NumPy only (the network file and Brian2 need no torch); :mod:`ttfs_brian.evaluate`
computes projections on batches (torch, float64) and :mod:`ttfs_brian.connectivity` lists their
synapses as index arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import ConversionError

KINDS = ("dense", "conv", "identity", "pool")
CONV_ATTRS = ("stride", "padding", "dilation", "groups")
POOL_ATTRS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


@dataclass(frozen=True)
class Projection:
    """Synapses from the layer ``source`` (see the module docstring for each ``kind``)."""

    source: str
    kind: str
    weight: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown projection kind {self.kind!r}; choose one of {KINDS}")

    def with_weight(self, weight: np.ndarray) -> "Projection":
        return replace(self, weight=np.asarray(weight, dtype=np.float64))

    def conv_attrs(self) -> dict[str, Any]:
        return {key: _tuple(self.attrs[key]) for key in CONV_ATTRS}

    def pool_attrs(self) -> dict[str, Any]:
        return {key: _tuple(self.attrs[key]) for key in POOL_ATTRS}


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def weight_sum(proj: Projection, target_shape: tuple[int, ...], weight: np.ndarray | None = None) -> np.ndarray:
    """Per target neuron, the sum of its incoming weights, zero-padded taps included (shape ``T``)."""
    w = np.asarray(proj.weight if weight is None else weight, dtype=np.float64)
    if proj.kind == "dense":
        return w.sum(axis=1).reshape(target_shape)
    if proj.kind == "conv":
        sums = w.reshape(w.shape[0], -1).sum(axis=1)
        return np.broadcast_to(sums[:, None, None], target_shape).copy()
    if proj.kind == "identity":
        return w.reshape(target_shape).copy()
    raise ValueError(f"a {proj.kind} projection has no weights")


def scale_columns(proj: Projection, factor: np.ndarray, source_shape: tuple[int, ...]) -> Projection:
    """The projection applied to ``factor * x`` instead of ``x`` (``factor`` of the source's shape; per
    channel for a convolution)."""
    factor = np.broadcast_to(np.asarray(factor, dtype=np.float64), source_shape)
    w = np.asarray(proj.weight, dtype=np.float64)
    if proj.kind == "dense":
        return proj.with_weight(w * factor.reshape(1, -1))
    if proj.kind == "identity":
        start = int(proj.attrs.get("offset", 0))
        return proj.with_weight(w * factor.reshape(-1)[start:start + w.size].reshape(w.shape))
    if proj.kind == "conv":
        per_channel = channel_values(factor, "the scale of a convolution's input")
        return proj.with_weight(w * input_channel_factor(per_channel, w.shape, int(proj.attrs["groups"])))
    raise ValueError(f"a {proj.kind} projection has no weights")


def scale_rows(proj: Projection, factor: np.ndarray, target_shape: tuple[int, ...]) -> Projection:
    """The projection with its output multiplied by ``factor`` (target's shape; per channel for a convolution)."""
    factor = np.broadcast_to(np.asarray(factor, dtype=np.float64), target_shape)
    w = np.asarray(proj.weight, dtype=np.float64)
    if proj.kind == "dense":
        return proj.with_weight(factor.reshape(-1, 1) * w)
    if proj.kind == "identity":
        return proj.with_weight(w * factor)
    if proj.kind == "conv":
        per_channel = channel_values(factor, "the scale of a convolution's output")
        return proj.with_weight(per_channel[:, None, None, None] * w)
    raise ValueError(f"a {proj.kind} projection has no weights")


def channel_values(array: np.ndarray, what: str) -> np.ndarray:
    """The per-channel values of a ``(C, H, W)`` array that must be constant over space."""
    array = np.asarray(array, dtype=np.float64)
    flat = array.reshape(array.shape[0], -1)
    if not np.allclose(flat, flat[:, :1], rtol=0, atol=1e-12 * max(1.0, float(np.abs(flat).max(initial=0)))):
        raise ConversionError(f"{what} varies across positions within a channel; a convolution shares its weights "
                         "across positions, so only per-channel maps can be folded into it")
    return flat[:, 0].copy()


def input_channel_factor(per_input_channel: np.ndarray, weight_shape: tuple[int, ...], groups: int) -> np.ndarray:
    """Broadcastable ``(C_out, C_in/groups, 1, 1)`` array: the factor of each weight's input channel."""
    c_out, c_in_group = weight_shape[0], weight_shape[1]
    group = np.arange(c_out) // (c_out // groups)
    channel = group[:, None] * c_in_group + np.arange(c_in_group)[None, :]
    return per_input_channel[channel][:, :, None, None]


def window_grid(in_shape: tuple[int, ...], out_shape: tuple[int, ...], kernel: tuple[int, int],
                stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]):
    """Input row/column of every (tap, output position) pair, broadcast to ``(kh, kw, H_out, W_out)``, the mask
    of taps inside the image, and the flat output position.

    ``iy = oy * stride - pad + ky * dilation`` (and likewise ``ix``): ``torch.nn.Conv2d``/``MaxPool2d``.
    """
    _, h_in, w_in = in_shape
    _, h_out, w_out = out_shape
    ky = np.arange(kernel[0]).reshape(-1, 1, 1, 1)
    kx = np.arange(kernel[1]).reshape(1, -1, 1, 1)
    oy = np.arange(h_out).reshape(1, 1, -1, 1)
    ox = np.arange(w_out).reshape(1, 1, 1, -1)
    iy = oy * stride[0] - padding[0] + ky * dilation[0]
    ix = ox * stride[1] - padding[1] + kx * dilation[1]
    iy, ix = np.broadcast_arrays(iy, ix)
    valid = (iy >= 0) & (iy < h_in) & (ix >= 0) & (ix < w_in)
    out_pos = np.broadcast_to(oy * w_out + ox, iy.shape)
    return iy, ix, valid, out_pos


def pair(value: Any) -> tuple[int, int]:
    """``3``, ``(3, 3)`` or ``[3, 3]`` (as stored in a network file) -> ``(3, 3)``."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    first, second = value
    return int(first), int(second)


def pad_sum(proj: Projection, source_shape: tuple[int, ...], target_shape: tuple[int, ...],
            weight: np.ndarray | None = None) -> np.ndarray:
    """Per target neuron, the summed weight of the taps that read zero padding (conv; zeros otherwise).

    In variant ``exact`` a padded input acts as a spike at the window's end (SPEC section 3).
    """
    if proj.kind != "conv":
        return np.zeros(target_shape)
    w = np.asarray(proj.weight if weight is None else weight, dtype=np.float64)
    attrs = proj.conv_attrs()
    _, _, valid, _ = window_grid(source_shape, target_shape, w.shape[2:], pair(attrs["stride"]),
                                 pair(attrs["padding"]), pair(attrs["dilation"]))
    return np.einsum("okl,klhw->ohw", w.sum(axis=1), (~valid).astype(np.float64))
