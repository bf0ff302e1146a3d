"""Thresholds re-derived for a biophysical neuron: what of the mapping a leak or a synaptic time constant takes away,
given back on average (a pass from network to network, like the conversion's).

**Why not exactly.** Take an ``exact`` neuron whose inputs ``x_j`` arrive at ``a_j = t_min - x_j`` and let
``u = t - t_min`` after its last input. With exponential synapses an input adds ``J_j tau_s (1 - e^{-(t - a_j) /
tau_s}) = J_j ((u + x_j) - (u + x_j)^2 / (2 tau_s)) + O(tau_s^-2)``, so to first order in ``1 / tau_s`` the potential
falls short of today's by ``(S u^2 + 2 u sum_j J_j x_j + sum_j J_j x_j^2) / (2 tau_s)`` (``S = sum_j J_j``, padding
included). A leak takes ``(1 / tau_m) int V dt``, the same form with ``alpha`` added. The last term,
``sum_j J_j x_j^2``, is a second moment of the inputs, not a function of the neuron's own value ``W x + b``: two input
patterns with the same value lose different amounts, so no threshold, drive or window of the neuron (its only
parameters) can make every spike exact again, not even to first order; nor can a threshold (a constant) cancel the
``u^2`` term. What a threshold can do is give back the loss *on average*: :func:`compensate` lowers each neuron's
threshold by its mean shortfall at its nominal crossing over calibration data, and shifts each output's drive (bias
for ``sparse``) by its mean shortfall at the readout, layer by layer on the nominal arrivals.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .network import TTFSNetwork
from .neuron import TIME_EPS_MS, integrator
from .perturb import Perturbation

COMPENSABLE = ("synaptic_tau", "leak", "conductance")


def compensate(net: TTFSNetwork, calibration: np.ndarray, perturbation: Perturbation) -> TTFSNetwork:
    """``net`` with thresholds (and output drives or biases) that give back, on the ``calibration`` inputs, the mean
    potential a neuron under ``perturbation`` lacks at its nominal crossing (see the module docstring)."""
    from dataclasses import replace

    from .analytic import simulate_analytic
    from .events import TimedRun

    if perturbation.kind not in COMPENSABLE:
        raise InputError(f"compensation exists for {list(COMPENSABLE)}, not {perturbation.kind!r}")
    if perturbation.is_identity:
        return net
    nominal = simulate_analytic(net, calibration)
    run = TimedRun(net, [perturbation], np.arange(len(calibration)))
    layers = dict(net.layers)
    for layer in net.layers.values():
        if layer.kind == "output":
            continue
        run.departures[layer.name] = torch.as_tensor(np.nan_to_num(nominal.spike_times[layer.name], nan=np.inf))
        if layer.kind != "neuron":
            continue
        times = nominal.spike_times[layer.name]
        crossed = np.isfinite(times) & (times < layer.t_max - TIME_EPS_MS)  # not forced at t_max, not silent
        if not crossed.any():
            continue
        theta = np.asarray(layer.arrays["threshold"], dtype=np.float64).reshape(layer.shape)
        potential = run.potential_at(layer, np.where(crossed, times, layer.t_min)).numpy()
        shortfall = np.where(crossed, theta - potential, 0.0)
        mean = shortfall.sum(axis=0) / np.maximum(crossed.sum(axis=0), 1)
        layers[layer.name] = replace(layer, arrays={**layer.arrays, "threshold": theta - mean})
    out = net.output_layer
    params = integrator(net, out)
    reached = run.output(out) - (np.asarray(out.arrays["bias"]).reshape(1, -1) if net.variant == "sparse" else 0.0)
    target = nominal.logits - (np.asarray(out.arrays["bias"]).reshape(1, -1) if net.variant == "sparse" else 0.0)
    missing = (target - reached).mean(axis=0)
    if net.variant == "exact":
        drive = np.asarray(out.arrays["drive"], dtype=np.float64).reshape(-1) + missing / params.window_in
        layers[out.name] = replace(out, arrays={**out.arrays, "drive": drive.reshape(np.shape(out.arrays["drive"]))})
    else:
        bias = np.asarray(out.arrays["bias"], dtype=np.float64).reshape(-1) + missing
        layers[out.name] = replace(out, arrays={**out.arrays, "bias": bias.reshape(np.shape(out.arrays["bias"]))})
    meta = {**net.meta, "compensated": perturbation.describe()}
    return replace(net, layers=layers, meta=meta)
