"""Each variant's integrating neuron, in the one parametrised form that both engines use.

Hidden layers of both variants and the output layer are all instances of

    dv/dt = ((alpha + I(t)) * f_in(t) + beta * f_late(t)) / tau_c,     I(t) = sum_j J_j H(t - a_j)

with ``a_j`` the arrival time of input ``j`` (its spike time plus the projection's delay), ``f_in``
the indicator of ``[t_on, t_off]`` and ``f_late`` that of ``[t_late, inf)``; ``v(t_on) = 0``:

=====================  =========  =================================  ======================  ============
layer                  ``alpha``  ``[t_on, t_off]``                  ``beta``                ``t_late``
=====================  =========  =================================  ======================  ============
exact, hidden (SPEC 3) 1          ``[t_0, inf)``                     J summed over padding   ``t_min(n)``
sparse, hidden (SPEC 4) 0         ``[t_0, t_min(n)]``                1 (constant drive)      ``t_min(n)``
exact, output          drive      ``[t_0, t_min(out)]``              0                       --
sparse, output         0          ``[t_0, t_min(out)]``              0                       --
=====================  =========  =================================  ======================  ============

``t_0`` is the layer's integration start (:func:`ttfs_brian.network.integration_start`; ``t_min`` of
the input layer for a chain), so an input that arrives earlier acts from ``t_0`` on (its value is
clamped to the window). Padding is SPEC's rule that a zero-padded input spikes at the end of its
window, i.e. arrives at ``t_min(n)``. A hidden neuron fires once, at the first ``t >= t_fire`` with
``v >= theta`` (``sparse``: only before ``t_max``; ``exact``: forced at ``t_max``). The output's
``v(t_min(out))`` is the logit (plus ``bias`` in ``sparse``). A hidden layer's optional array ``alpha``
(perturbation ``alpha_mismatch``) replaces the nominal drive 1: ``exact``'s alpha, ``sparse``'s beta.
NumPy only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .network import Layer, TTFSNetwork, integration_start
from .projection import pad_sum, weight_sum

NEVER_MS = 1e9
"""A time (ms) later than any simulation: a gate that never closes, a silent input's spike time."""

TIME_EPS_MS = 1e-10
"""Resolution (ms) of every comparison of a crossing time with a window edge, in both engines: a ``sparse``
crossing less than this before ``t_max`` is a value of 0 (silence), a crossing less than this before ``t_min``
is neither clipped nor early. Far above the rounding of a crossing time (~1e-13 ms measured on VGG-small; a
window edge moved by a latency rounds too), far below the 1e-9 ms to which the engines are held."""


@dataclass(frozen=True)
class Integrator:
    """The constants of one integrating layer (see the module docstring); arrays per neuron, times in ms."""

    alpha: np.ndarray
    beta: np.ndarray
    theta: np.ndarray | None
    t_on: float
    t_off: float
    t_late: float
    t_fire: float
    t_max: float
    tau_c: float

    @property
    def window_in(self) -> float:
        """``(t_late - t_on) / tau_c``: the longest an input can act before ``t_min`` (the input clamp)."""
        return (self.t_late - self.t_on) / self.tau_c


def integrator(net: TTFSNetwork, layer: Layer) -> Integrator:
    """The parameters of ``layer`` (kind ``neuron`` or ``output``) for the network's variant."""
    size = layer.size
    t_on = integration_start(net, layer)
    exact = net.variant == "exact"
    if layer.kind == "output":
        alpha = np.asarray(layer.arrays["drive"], dtype=np.float64).reshape(-1) if exact else np.zeros(size)
        return Integrator(np.broadcast_to(alpha, (size,)).copy(), np.zeros(size), None, t_on, layer.t_min,
                          layer.t_min, layer.t_min, layer.t_min, net.tau_c)
    if layer.kind != "neuron":
        raise ValueError(f"layer {layer.name!r} of kind {layer.kind!r} does not integrate")
    theta = np.broadcast_to(np.asarray(layer.arrays["threshold"], dtype=np.float64).reshape(-1), (size,)).copy()
    if exact:
        alpha = np.asarray(layer.arrays.get("alpha", np.ones(layer.shape)), dtype=np.float64).reshape(-1)
        beta = sum((pad_sum(p, net.layers[p.source].shape, layer.shape) for p in layer.projections),
                   np.zeros(layer.shape)).reshape(-1)
        return Integrator(np.broadcast_to(alpha, (size,)).copy(), beta, theta, t_on, NEVER_MS, layer.t_min, t_on,
                          layer.t_max, net.tau_c)
    drive = np.asarray(layer.arrays.get("alpha", np.ones(layer.shape)), dtype=np.float64).reshape(-1)
    return Integrator(np.zeros(size), np.broadcast_to(drive, (size,)).copy(), theta, t_on, layer.t_min, layer.t_min,
                      layer.t_min, layer.t_max, net.tau_c)


def not_rising(net: TTFSNetwork, layer: Layer) -> np.ndarray:
    """Per neuron of a hidden layer, whether its potential cannot rise once every input has arrived: ``exact``'s
    slope ``alpha + sum_j J_j`` (padding included) or ``sparse``'s drive ``beta`` is ``<= 0``.

    The mapping needs that slope positive (SPEC section 3: ``S < 1``, so ``1 + sum J > 0``); a perturbation can
    break it (quantized or noisy weights, a large alpha mismatch). Such a neuron is still simulated as it is
    (``exact``: it fires early or when forced at ``t_max``; ``sparse``: at ``t_min`` if already above threshold,
    else never), and both engines flag every sample of its network (reason ``not_rising``).
    """
    if layer.kind != "neuron":
        return np.zeros(layer.size, dtype=bool)
    params = integrator(net, layer)
    if net.variant == "sparse":
        return params.beta <= 0
    slope = params.alpha + sum((weight_sum(p, layer.shape) for p in layer.projections), np.zeros(layer.shape)).reshape(-1)
    return slope <= 0
