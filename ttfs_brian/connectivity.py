"""Synapse index arithmetic: which neuron of a projection's source feeds which neuron of its target, and
with what weight (NumPy only).

Every function works on the flattened per-sample neuron indices of C-ordered layer shapes
(``(features,)`` for linear layers, ``(C, H, W)`` for conv and pool layers; a ``Flatten`` between
a conv and a linear layer is the identity on these indices, as in ``torch.flatten``). Nothing
loops over neurons or synapses: each connection list is built by broadcasting the index grids
``(channel, kernel tap, output position)`` against each other.

For an output position ``(oy, ox)`` and a kernel tap ``(ky, kx)`` the input position is

    iy = oy * stride_h - pad_h + ky * dilation_h,    ix = ox * stride_w - pad_w + kx * dilation_w

(``torch.nn.Conv2d`` / ``MaxPool2d`` cross-correlation). A tap whose input position falls outside
the image reads the padding and has no synapse: for a convolution that is a zero input (in variant
``exact`` a spike at the end of the window, whose weight :func:`ttfs_brian.projection.pad_sum` turns
into a constant drive), for a max pool ``-inf``.

:func:`replicate` copies a per-sample connection list ``R`` times with index offsets; this is how
the simulator puts ``R`` samples of a batch side by side in one compiled Brian2 network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .network import Layer, TTFSNetwork
from .projection import Projection, pair, window_grid


@dataclass(frozen=True)
class Connectivity:
    """Synapses from a layer of ``n_pre`` neurons onto one of ``n_post`` neurons (one sample).

    ``pre``/``post`` are int64 flat neuron indices, sorted by ``pre``; ``weight`` the synaptic weights
    (all ones for pools). ``fan_in[i]`` counts the synapses onto neuron ``i`` (for a pool, the number of valid,
    non-padding inputs of its pool window).
    """

    pre: np.ndarray
    post: np.ndarray
    weight: np.ndarray
    n_pre: int
    n_post: int

    @property
    def n_synapses(self) -> int:
        return int(self.pre.size)

    @property
    def fan_in(self) -> np.ndarray:
        return np.bincount(self.post, minlength=self.n_post)

    @property
    def fan_out(self) -> np.ndarray:
        return np.bincount(self.pre, minlength=self.n_pre)


def linear(weight: np.ndarray, n_pre: int | None = None) -> Connectivity:
    """All-to-all synapses of ``y = weight @ x``: synapse ``(j -> i)`` carries ``weight[i, j]``."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 2:
        raise ValueError(f"linear weight must be 2-D (out, in), got shape {weight.shape}")
    n_out, n_in = weight.shape
    if n_pre is not None and n_pre != n_in:
        raise ValueError(f"linear weight expects {n_in} inputs but the input layer has {n_pre} neurons")
    pre, post = np.divmod(np.arange(n_out * n_in, dtype=np.int64), n_out)
    return _nonzero(Connectivity(pre, post, weight.T.reshape(-1).copy(), n_in, n_out))


def identity(weight: np.ndarray, n_pre: int, offset: int = 0) -> Connectivity:
    """One synapse ``offset + i -> i`` of weight ``weight[i]`` per target neuron (a shortcut)."""
    weight = np.asarray(weight, dtype=np.float64).reshape(-1)
    post = np.arange(weight.size, dtype=np.int64)
    return _nonzero(Connectivity(post + offset, post, weight.copy(), n_pre, weight.size))


def _by_source(conn: Connectivity) -> Connectivity:
    """The same synapses ordered by source neuron (stable): a spike's synapses are then contiguous, which
    Brian2's spike delivery reads ~3x faster than the scattered lists of the broadcast order."""
    order = np.argsort(conn.pre, kind="stable")
    return Connectivity(conn.pre[order], conn.post[order], conn.weight[order], conn.n_pre, conn.n_post)


def _nonzero(conn: Connectivity) -> Connectivity:
    """Without its synapses of weight exactly 0 (they change nothing in either variant)."""
    keep = conn.weight != 0
    if keep.all():
        return conn
    return Connectivity(conn.pre[keep], conn.post[keep], conn.weight[keep], conn.n_pre, conn.n_post)


def conv2d(weight: np.ndarray, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *,
           stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Connectivity:
    """Synapses of a zero-padded ``Conv2d`` (cross-correlation, any stride/padding/dilation/groups).

    Output channel ``co`` belongs to group ``g = co // (C_out / groups)`` and reads input channels
    ``g * C_in/groups + c`` for ``c < C_in/groups``. Taps that read padding have no synapse.
    """
    weight = np.asarray(weight, dtype=np.float64)
    c_out, c_in_g, kh, kw = weight.shape
    c_in, h_in, w_in = in_shape
    if out_shape[0] != c_out or c_in != c_in_g * groups or c_out % groups:
        raise ValueError(f"conv weight {weight.shape} with groups={groups} does not map {in_shape} to {out_shape}")
    _, h_out, w_out = out_shape
    iy, ix, valid, out_pos = window_grid(in_shape, out_shape, (kh, kw), pair(stride), pair(padding), pair(dilation))
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
    return _nonzero(_by_source(Connectivity(pre, post, w, c_in * h_in * w_in, c_out * h_out * w_out)))


def maxpool2d(in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, kernel_size: Any, stride: Any = None,
              padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False) -> Connectivity:
    """Synapses from every valid (non-padding) input of each pool window onto the pooled neuron.

    ``out_shape`` is taken as given (it already encodes ``ceil_mode``); windows that run past the
    input simply have fewer valid taps, exactly as in ``torch.nn.MaxPool2d``.
    """
    kernel = pair(kernel_size)
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else pair(stride)
    channels, h_in, w_in = in_shape
    if out_shape[0] != channels:
        raise ValueError(f"max pool maps {in_shape} to {out_shape}: channel counts differ")
    _, h_out, w_out = out_shape
    iy, ix, valid, out_pos = window_grid(in_shape, out_shape, kernel, stride, pair(padding), pair(dilation))
    c = np.arange(channels).reshape(-1, 1, 1, 1, 1)
    full = (channels,) + valid.shape
    valid_full = np.broadcast_to(valid, full)
    pre = np.broadcast_to(c * (h_in * w_in) + iy * w_in + ix, full)[valid_full].astype(np.int64)
    post = np.broadcast_to(c * (h_out * w_out) + out_pos, full)[valid_full].astype(np.int64)
    return _by_source(Connectivity(pre, post, np.ones(pre.size), channels * h_in * w_in, channels * h_out * w_out))


def for_projection(net: TTFSNetwork, layer: Layer, proj: Projection) -> Connectivity:
    """The synapses of the projection ``proj`` into ``layer``."""
    return for_shapes(proj, net.layers[proj.source].shape, layer.shape)


def for_shapes(proj: Projection, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Connectivity:
    """The synapses of ``proj`` from a layer of shape ``in_shape`` onto one of shape ``out_shape``."""
    if proj.kind == "dense":
        return linear(proj.weight, int(np.prod(in_shape)))
    if proj.kind == "identity":
        return identity(proj.weight, int(np.prod(in_shape)), int(proj.attrs.get("offset", 0)))
    if len(in_shape) != 3:
        raise ValueError(f"a {proj.kind} projection needs a (C, H, W) source, got {in_shape}")
    if proj.kind == "conv":
        attrs = proj.conv_attrs()
        return conv2d(proj.weight, in_shape, out_shape, stride=attrs["stride"], padding=attrs["padding"],
                      dilation=attrs["dilation"], groups=int(attrs["groups"]))
    attrs = proj.pool_attrs()
    return maxpool2d(in_shape, out_shape, kernel_size=attrs["kernel_size"], stride=attrs["stride"],
                     padding=attrs["padding"], dilation=attrs["dilation"], ceil_mode=bool(attrs["ceil_mode"]))


def replicate(conn: Connectivity, copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``copies`` side-by-side copies: copy ``r`` maps pre ``j + r*n_pre`` to post ``i + r*n_post``."""
    if copies == 1:
        return conn.pre, conn.post, conn.weight
    offsets = np.arange(copies, dtype=np.int64)[:, None]
    pre = (conn.pre[None, :] + offsets * conn.n_pre).reshape(-1)
    post = (conn.post[None, :] + offsets * conn.n_post).reshape(-1)
    weight = np.tile(conn.weight, copies)
    return pre, post, weight
