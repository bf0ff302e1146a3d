"""Operation counts: synaptic events of a simulation and multiply-accumulates of the ReLU network."""
from __future__ import annotations

import numpy as np

from .network import TTFSNetwork
from .result import SimulationResult


def synaptic_events(net: TTFSNetwork, result: SimulationResult) -> int:
    """Spikes times fan-out, summed over every synaptic projection and every sample."""
    from .brian.connectivity import for_layer

    n = result.logits.shape[0]
    total = 0
    for layer in net.layers.values():
        if layer.kind == "input":
            continue
        pred = net.predecessor(layer)
        spiked = ~np.isnan(result.spike_times[pred.name]).reshape(n, -1)
        total += int(spiked.sum(axis=0, dtype=np.int64) @ for_layer(layer, pred).fan_out)
    return total


def relu_macs(net: TTFSNetwork) -> int:
    """Multiply-accumulates per sample of the (folded) ReLU network: neurons times fan-in, summed."""
    return int(sum(layer.size * int(np.prod(layer.arrays["weight"].shape[1:]))
                   for layer in net.layers.values() if layer.kind in ("linear", "conv")))
