"""Synapse index arithmetic: which neuron of one layer feeds which neuron of the next, and with what weight.

Every function works on the flattened per-sample neuron indices of C-ordered layer shapes
(``(features,)`` for linear layers, ``(C, H, W)`` for conv and pool layers; a ``Flatten`` between
a conv and a linear layer is the identity on these indices, as in ``torch.flatten``). Nothing
loops over neurons or synapses: each connection list is built by broadcasting the index grids
``(channel, kernel tap, output position)`` against each other.

For an output position ``(oy, ox)`` and a kernel tap ``(ky, kx)`` the input position is

    iy = oy * stride_h - pad_h + ky * dilation_h,    ix = ox * stride_w - pad_w + kx * dilation_w

(``torch.nn.Conv2d`` / ``MaxPool2d`` cross-correlation). A tap whose input position falls outside
the image reads the padding: for a convolution that is a zero input, which in variant ``exact``
spikes at ``t_max`` of the input layer (SPEC section 3), so its weight goes into the per-neuron
padding sum returned alongside the synapses; for a max pool the padding is ``-inf`` and the tap
does not exist.

:func:`replicate` copies a per-sample connection list ``R`` times with index offsets; this is how
the simulator puts ``R`` samples of a batch side by side in one compiled Brian2 network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .network import Layer


@dataclass(frozen=True)
class Connectivity:
    """Synapses from a layer of ``n_pre`` neurons onto one of ``n_post`` neurons (one sample).

    ``pre``/``post`` are int64 flat neuron indices, ``weight`` the synaptic weights (all ones for
    pools). ``pad_sum[i]`` is the summed weight of neuron ``i``'s kernel taps that read zero padding
    (conv only; zeros otherwise). ``fan_in[i]`` counts the synapses onto neuron ``i`` (for a pool,
    the number of valid, non-padding inputs of its pool window).
    """

    pre: np.ndarray
    post: np.ndarray
    weight: np.ndarray
    n_pre: int
    n_post: int
    pad_sum: np.ndarray

    @property
    def n_synapses(self) -> int:
        return int(self.pre.size)

    @property
    def fan_in(self) -> np.ndarray:
        return np.bincount(self.post, minlength=self.n_post)

    @property
    def fan_out(self) -> np.ndarray:
        return np.bincount(self.pre, minlength=self.n_pre)


def _pair(value: Any) -> tuple[int, int]:
    """``3`` or ``(3, 3)`` or ``[3, 3]`` (as stored in a network file) -> ``(3, 3)``."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    first, second = value
    return int(first), int(second)


def linear(weight: np.ndarray, n_pre: int | None = None) -> Connectivity:
    """All-to-all synapses of ``y = weight @ x``: synapse ``(j -> i)`` carries ``weight[i, j]``."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 2:
        raise ValueError(f"linear weight must be 2-D (out, in), got shape {weight.shape}")
    n_out, n_in = weight.shape
    if n_pre is not None and n_pre != n_in:
        raise ValueError(f"linear weight expects {n_in} inputs but the input layer has {n_pre} neurons")
    post, pre = np.divmod(np.arange(n_out * n_in, dtype=np.int64), n_in)
    return Connectivity(pre, post, weight.reshape(-1).copy(), n_in, n_out, np.zeros(n_out))


def _window_grid(in_shape: tuple[int, ...], out_shape: tuple[int, ...], kernel: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]):
    """Input row/column of every (tap, output position) pair, broadcast to ``(kh, kw, H_out, W_out)``."""
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


def conv2d(weight: np.ndarray, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *,
           stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Connectivity:
    """Synapses of a zero-padded ``Conv2d`` (cross-correlation, any stride/padding/dilation/groups).

    Output channel ``co`` belongs to group ``g = co // (C_out / groups)`` and reads input channels
    ``g * C_in/groups + c`` for ``c < C_in/groups``. Taps that read padding become ``pad_sum``.
    """
    weight = np.asarray(weight, dtype=np.float64)
    c_out, c_in_g, kh, kw = weight.shape
    c_in, h_in, w_in = in_shape
    if out_shape[0] != c_out or c_in != c_in_g * groups or c_out % groups:
        raise ValueError(f"conv weight {weight.shape} with groups={groups} does not map {in_shape} to {out_shape}")
    _, h_out, w_out = out_shape
    iy, ix, valid, out_pos = _window_grid(in_shape, out_shape, (kh, kw), _pair(stride), _pair(padding),
                                          _pair(dilation))
    # Broadcast to (C_out, C_in/groups, kh, kw, H_out, W_out): one entry per (synapse or padding tap).
    co = np.arange(c_out).reshape(-1, 1, 1, 1, 1, 1)
    ci = (co // (c_out // groups)) * c_in_g + np.arange(c_in_g).reshape(1, -1, 1, 1, 1, 1)
    full = (c_out, c_in_g, kh, kw, h_out, w_out)
    w_full = np.broadcast_to(weight[..., None, None], full)
    post_full = np.broadcast_to(co * (h_out * w_out) + out_pos, full)
    valid_full = np.broadcast_to(valid, full)
    pre_full = np.broadcast_to(ci * (h_in * w_in) + iy * w_in + ix, full)
    pre = pre_full[valid_full].astype(np.int64)
    post = post_full[valid_full].astype(np.int64)
    w = w_full[valid_full].copy()
    pad_sum = np.bincount(post_full[~valid_full], weights=w_full[~valid_full], minlength=c_out * h_out * w_out)
    return Connectivity(pre, post, w, c_in * h_in * w_in, c_out * h_out * w_out, pad_sum.astype(np.float64))


def maxpool2d(in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, kernel_size: Any, stride: Any = None,
              padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False) -> Connectivity:
    """Synapses from every valid (non-padding) input of each pool window onto the pooled neuron.

    ``out_shape`` is taken as given (it already encodes ``ceil_mode``); windows that run past the
    input simply have fewer valid taps, exactly as in ``torch.nn.MaxPool2d``.
    """
    kernel = _pair(kernel_size)
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _pair(stride)
    channels, h_in, w_in = in_shape
    if out_shape[0] != channels:
        raise ValueError(f"max pool maps {in_shape} to {out_shape}: channel counts differ")
    _, h_out, w_out = out_shape
    iy, ix, valid, out_pos = _window_grid(in_shape, out_shape, kernel, stride, _pair(padding), _pair(dilation))
    c = np.arange(channels).reshape(-1, 1, 1, 1, 1)
    full = (channels,) + valid.shape
    valid_full = np.broadcast_to(valid, full)
    pre = np.broadcast_to(c * (h_in * w_in) + iy * w_in + ix, full)[valid_full].astype(np.int64)
    post = np.broadcast_to(c * (h_out * w_out) + out_pos, full)[valid_full].astype(np.int64)
    n_post = channels * h_out * w_out
    return Connectivity(pre, post, np.ones(pre.size), channels * h_in * w_in, n_post, np.zeros(n_post))


def for_layer(layer: Layer, pre_layer: Layer) -> Connectivity:
    """Connectivity of ``layer`` from its input layer ``pre_layer`` (kinds linear, conv, maxpool)."""
    in_shape = tuple(pre_layer.shape)
    out_shape = tuple(layer.shape)
    attrs = layer.attrs
    if layer.kind == "linear":
        return linear(layer.arrays["weight"], pre_layer.size)
    if layer.kind == "conv":
        if len(in_shape) != 3:
            raise ValueError(f"conv layer {layer.name!r} needs a (C, H, W) input, got {in_shape}")
        return conv2d(layer.arrays["weight"], in_shape, out_shape, stride=attrs.get("stride", 1),
                      padding=attrs.get("padding", 0), dilation=attrs.get("dilation", 1),
                      groups=int(attrs.get("groups", 1)))
    if layer.kind == "maxpool":
        return maxpool2d(in_shape, out_shape, kernel_size=attrs["kernel_size"], stride=attrs.get("stride"),
                         padding=attrs.get("padding", 0), dilation=attrs.get("dilation", 1),
                         ceil_mode=bool(attrs.get("ceil_mode", False)))
    raise ValueError(f"layer {layer.name!r} of kind {layer.kind!r} has no incoming synapses")


def replicate(conn: Connectivity, copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``copies`` side-by-side copies: copy ``r`` maps pre ``j + r*n_pre`` to post ``i + r*n_post``."""
    offsets = np.arange(copies, dtype=np.int64)[:, None]
    pre = (conn.pre[None, :] + offsets * conn.n_pre).reshape(-1)
    post = (conn.post[None, :] + offsets * conn.n_post).reshape(-1)
    weight = np.tile(conn.weight, copies)
    return pre, post, weight
