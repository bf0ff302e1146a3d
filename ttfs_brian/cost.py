"""Operation counts: synaptic events of a simulation and multiply-accumulates of the ReLU network."""
from __future__ import annotations

import numpy as np

from .network import TTFSNetwork
from .result import SimulationResult


def synaptic_events(net: TTFSNetwork, result: SimulationResult,
                    fan_out: dict[str, np.ndarray] | None = None) -> int:
    """Spikes times fan-out, summed over every synaptic projection and every sample.

    ``fan_out`` (layer name -> out-degree of each neuron of its input layer) saves rebuilding the
    connectivity when the caller already has it.
    """
    from .connectivity import for_layer

    n = result.logits.shape[0]
    total = 0
    for layer in net.layers.values():
        if layer.kind == "input":
            continue
        pred = net.predecessor(layer)
        degree = fan_out[layer.name] if fan_out is not None else for_layer(layer, pred).fan_out
        spiked = ~np.isnan(result.spike_times[pred.name]).reshape(n, -1)
        total += int(spiked.sum(axis=0, dtype=np.int64) @ degree)
    return total


def relu_macs(net: TTFSNetwork) -> int:
    """Multiply-accumulates per sample of the (folded) ReLU network: neurons times fan-in, summed."""
    return int(sum(layer.size * int(np.prod(layer.arrays["weight"].shape[1:]))
                   for layer in net.layers.values() if layer.kind in ("linear", "conv")))
