"""The spike-time code (SPEC section 2), defined once for every engine.

A value ``x >= 0`` of a layer (units of ``tau_c``) is carried by one spike at ``t = t_max - x * tau_c``
(ms). Variant ``sparse`` codes 0 by silence (NaN here); variant ``exact`` by a spike at ``t_max``.
Inputs ``x`` of the network are first mapped affinely onto [0, 1] with the calibrated bounds.
NumPy only.
"""
from __future__ import annotations

import logging

import numpy as np

from .network import Layer, TTFSNetwork
from .neuron import TIME_EPS_MS

log = logging.getLogger(__name__)


def spike_times(net: TTFSNetwork, layer: Layer, values: np.ndarray) -> np.ndarray:
    """Spike times (ms) of ``values``; NaN (silence) for values <= 0 in ``sparse``, and for a hidden layer's values
    within :data:`~ttfs_brian.neuron.TIME_EPS_MS` of 0 (a crossing that close to ``t_max`` is silence in every
    engine)."""
    times = layer.t_max - np.asarray(values, dtype=np.float64) * net.tau_c
    if net.variant == "sparse":
        floor = 0.0 if layer.kind == "input" else TIME_EPS_MS / net.tau_c
        times = np.where(np.asarray(values) > floor, times, np.nan)
    return times


def decode(net: TTFSNetwork, layer: Layer, times: np.ndarray) -> np.ndarray:
    """Values ``(t_max - t) / tau_c`` of spike times; silence (NaN) is 0."""
    return np.nan_to_num((layer.t_max - np.asarray(times, dtype=np.float64)) / net.tau_c, nan=0.0)


def horizon(net: TTFSNetwork, layer: Layer) -> float:
    """The last time (ms) a spike of ``layer`` can still act: the latest, over the projections that carry it, of the
    target's last use minus the delay (an ``exact`` neuron's ``t_max``, after which it has fired; a ``sparse`` one's
    ``t_min``, when its input gate closes; the readout; a max pool passes a spike on at once); the readout for a
    layer that feeds none."""
    ends = []
    for target in net.layers.values():
        for proj in target.projections:
            if proj.source != layer.name:
                continue
            if target.kind == "maxpool":
                end = horizon(net, target)
            elif target.kind == "output" or net.variant == "sparse":
                end = target.t_min
            else:
                end = target.t_max
            ends.append(end - proj.delay)
    return max(ends) if ends else net.output_layer.t_min


def observed(net: TTFSNetwork, layer: Layer, times: np.ndarray) -> np.ndarray:
    """``times`` of ``layer`` with the spikes after its :func:`horizon` removed (NaN).

    No later spike can change anything, and a simulation need not hold it: only a spike relayed late can be that
    late (a max pool passes on its input's arrival, which a jittered spike can delay past every window). Both
    engines report what they must observe; a spike at the horizon itself (an ``exact`` neuron forced at a ``t_max``
    that is the readout) is kept, to rounding.
    """
    return np.where(np.asarray(times) > horizon(net, layer) + READOUT_EPS_MS, np.nan, times)


READOUT_EPS_MS = 1e-9
"""Rounding of a spike time at the readout (Brian2 stores seconds, the network milliseconds)."""


def encode_inputs(net: TTFSNetwork, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input values ``u = (x - low) / (high - low)`` clipped to [0, 1], and the mask of clipped inputs.

    Every engine encodes through this function, so every engine warns alike about inputs outside the
    calibrated range (they are also counted in the report and flag their samples).
    """
    layer = net.input
    u = (data - layer.arrays["low"]) / (layer.arrays["high"] - layer.arrays["low"])
    clipped = (u < 0) | (u > 1)
    if clipped.any():
        samples = int(clipped.reshape(len(data), -1).any(axis=1).sum())
        log.warning("%d input values in %d of %d samples lie outside the calibrated range [low, high] and were "
                    "clipped; those samples are flagged (convert with input_range=(low, high) covering the data, "
                    "or recalibrate)", int(clipped.sum()), samples, len(data))
    return np.clip(u, 0.0, 1.0), clipped


def input_spike_times(net: TTFSNetwork, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spike times of the input layer for raw inputs ``data`` (NaN = silent) and the clipped mask."""
    u, clipped = encode_inputs(net, data)
    return spike_times(net, net.input, u), clipped
