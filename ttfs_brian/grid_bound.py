"""Worst-case error of grid timing (spikes on the ``dt`` grid), propagated through the weights.

Grid timing (``timing="grid"`` in Brian2) moves every spike in two ways: a spike is detected at the
end of the step in which ``v`` crosses, stamped with the step's start, and acts on the next layer
from the end of that step. So an input spike of time ``t_in`` acts from ``a`` with
``t_in <= a < t_in + dt``, and a hidden neuron whose (grid) crossing is ``t_g`` acts from
``[t_g, t_g + dt)``, stamped within ``dt`` before that.

Each input ``j`` contributes ``J_ij * |[a_j, t] & gate|`` to ``v_i(t)``, which moves by at most
``|J_ij| |da_j|`` when ``a_j`` moves by ``da_j`` (the gates only clip). So if every input of
neuron ``i`` arrives within ``D_j`` of its exact time, ``|v_grid(t) - v(t)| <= E_i = sum_j |J_ij| D_j
/ tau_c`` at every ``t``. After ``t_min`` of its layer a neuron's potential rises with the constant
slope ``s_i / tau_c`` (``exact``: ``s_i = 1 + sum_j J_ij`` over its whole kernel, padding included;
``sparse``: ``s_i = 1``), so the crossing moves by at most ``tau_c E_i / s_i`` and

    D_i = dt + sum_j |J_ij| D_j / s_i,        D_input = dt,        D_pool = max over the pool of D_j

bounds the error of the spike time (stamped or acting). Clipping at ``t_max`` (the forced spike of
``exact``, silence in ``sparse``) only shortens the error. The logits (``v`` at the readout) move by
at most ``sum_j |W_ij| D_j / tau_c``. A neuron whose grid crossing falls before ``t_min`` is outside
this argument, and the Brian2 report already counts it (clipped or early fired), flagging its
sample. A sample whose top logit is not ahead of every other by more than the two logits' bounds
could change its prediction within the bound: it is flagged too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .connectivity import Connectivity
from .network import TTFSNetwork
from .neuron import integrator


@dataclass(frozen=True)
class GridBound:
    """Per-neuron bounds (ms) on the spike-time error, by layer name, and per-class bounds on the logits."""

    spike_ms: dict[str, np.ndarray]
    logits: np.ndarray


def grid_error_bound(net: TTFSNetwork, dt: float, connections: dict[tuple[str, int], Connectivity]) -> GridBound:
    """The bounds of the module docstring for ``net`` simulated with grid timing at step ``dt`` (ms).

    ``connections[(layer, k)]`` is the connectivity of the ``k``-th projection into ``layer``.
    """
    bound: dict[str, np.ndarray] = {}
    logits = None
    for layer in net.layers.values():
        if layer.kind == "input":
            bound[layer.name] = np.full(layer.size, float(dt))
            continue
        conns = [(connections[(layer.name, k)], bound[p.source]) for k, p in enumerate(layer.projections)]
        if layer.kind == "maxpool":
            worst = np.zeros(layer.size)
            for conn, incoming in conns:
                np.maximum.at(worst, conn.post, incoming[conn.pre])
            bound[layer.name] = worst
            continue
        spread = sum(np.bincount(c.post, weights=np.abs(c.weight) * incoming[c.pre], minlength=layer.size)
                     for c, incoming in conns)
        if layer.is_output:
            logits = spread / net.tau_c
            continue
        params = integrator(net, layer)
        slope = params.beta.copy()
        if net.variant == "exact":
            slope += params.alpha + sum(np.bincount(c.post, weights=c.weight, minlength=layer.size) for c, _ in conns)
        bound[layer.name] = dt + spread / slope
    assert logits is not None
    return GridBound(bound, logits)


def uncertain_predictions(logits: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Samples whose argmax could change if every logit ``k`` moved by up to ``bound[k]``."""
    top = np.argmax(logits, axis=1)
    rows = np.arange(len(logits))
    gap = logits[rows, top][:, None] - logits
    reach = bound[top][:, None] + bound[None, :]
    others = np.ones_like(logits, dtype=bool)
    others[rows, top] = False
    return np.any(others & (gap <= reach), axis=1)
