"""Projections evaluated on batches of values (torch, float64): shared by the converter (calibration)
and the analytic engine, so both compute a projection the same way.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .projection import Projection


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def apply(proj: Projection, x: torch.Tensor, target_shape: tuple[int, ...],
          weight: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_j w_ij x_j`` for every target neuron: ``(N, *S) -> (N, *T)`` (dense, conv, identity).

    ``weight`` overrides the projection's own (e.g. only its negative part).
    """
    w = _t(proj.weight) if weight is None else weight
    n = x.shape[0]
    if proj.kind == "dense":
        return (x.reshape(n, -1) @ w.T).reshape(n, *target_shape)
    if proj.kind == "conv":
        return F.conv2d(x, w, **proj.conv_attrs())
    if proj.kind == "identity":
        start = int(proj.attrs.get("offset", 0))
        return x.reshape(n, -1)[:, start:start + w.numel()].reshape(n, *target_shape) * w
    raise ValueError(f"a {proj.kind} projection has no weighted sum")


def pool(proj: Projection, x: torch.Tensor, sign: np.ndarray) -> torch.Tensor:
    """The pool projection ``proj`` applied to ``x`` (see :func:`signed_max_pool`)."""
    return signed_max_pool(x, sign, proj.pool_attrs())


def signed_max_pool(x: torch.Tensor, sign: np.ndarray, attrs: dict) -> torch.Tensor:
    """Max pooling of the channels with ``sign`` +1, min pooling of those with -1."""
    maxima = F.max_pool2d(x, **attrs)
    if np.all(np.asarray(sign) > 0):
        return maxima
    minima = -F.max_pool2d(-x, **attrs)
    return torch.where(_t(sign).reshape(1, -1, 1, 1) > 0, maxima, minima)


def fan_in(proj: Projection, x: torch.Tensor, target_shape: tuple[int, ...], index: tuple[torch.Tensor, ...],
           weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input values and weights of the target neurons ``index`` (sample first), as ``(K, fan_in)`` arrays.

    Zero-padded taps of a convolution appear as inputs of value 0 (a spike at the window's end).
    """
    w = _t(proj.weight) if weight is None else weight
    sample, neuron = index[0], index[1:]
    k = len(sample)
    if proj.kind == "dense":
        flat = torch.as_tensor(np.ravel_multi_index([t.numpy() for t in neuron], target_shape))
        return x.reshape(x.shape[0], -1)[sample], w[flat]
    if proj.kind == "identity":
        flat = torch.as_tensor(np.ravel_multi_index([t.numpy() for t in neuron], target_shape))
        start = int(proj.attrs.get("offset", 0))
        return x.reshape(x.shape[0], -1)[sample, start + flat].reshape(k, 1), w.reshape(-1)[flat].reshape(k, 1)
    if proj.kind != "conv":
        raise ValueError(f"a {proj.kind} projection has no weighted inputs")
    channel, row, col = neuron
    attrs = proj.conv_attrs()
    groups = attrs["groups"]
    used, local = torch.unique(sample, return_inverse=True)
    patches = F.unfold(x[used], w.shape[2:], dilation=attrs["dilation"], padding=attrs["padding"],
                       stride=attrs["stride"])
    position = row * target_shape[2] + col
    cols = patches[local, :, position].reshape(k, groups, -1)
    group = channel // (w.shape[0] // groups)
    return cols[torch.arange(k), group], w[channel].reshape(k, -1)




def fan_in_sources(proj: Projection, source_shape: tuple[int, ...], target_shape: tuple[int, ...],
                   index: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The flat source neuron of every input of :func:`fan_in` (same order), ``-1`` for a zero-padded tap: with the
    target neuron, what names a synapse (:func:`ttfs_brian.perturb.synapse_keys`)."""
    size = int(np.prod(source_shape))
    ids = torch.arange(1, size + 1, dtype=torch.float64).reshape(1, *source_shape)  # 0 is a padded tap
    k = len(index[0])
    if proj.kind == "conv":
        # fan_in gathers per sample; every sample has the same sources, so sample 0 stands for all
        zeros = torch.zeros(k, dtype=torch.int64)
        values, _ = fan_in(proj, ids, target_shape, (zeros, *index[1:]))
    elif proj.kind == "dense":
        values = ids.reshape(1, -1).expand(k, -1)
    elif proj.kind == "identity":
        flat = torch.as_tensor(np.ravel_multi_index([t.numpy() for t in index[1:]], target_shape))
        values = (int(proj.attrs.get("offset", 0)) + flat + 1).to(torch.float64).reshape(k, 1)
    else:
        raise ValueError(f"a {proj.kind} projection has no weighted inputs")
    return values.round().to(torch.int64) - 1
