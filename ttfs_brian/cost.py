"""Operation counts: synaptic events of a simulation and multiply-accumulates of the ReLU network."""
from __future__ import annotations

import numpy as np

from .connectivity import for_projection
from .network import TTFSNetwork
from .result import SimulationResult


def synaptic_events(net: TTFSNetwork, result: SimulationResult,
                    fan_out: dict[tuple[str, int], np.ndarray] | None = None) -> int:
    """Spikes times fan-out, summed over every projection and every sample.

    ``fan_out[(layer, k)]`` (the out-degrees of the ``k``-th projection into ``layer``) saves listing the
    synapses when the caller already knows them.
    """
    n = result.logits.shape[0]
    total = 0
    for layer in net.layers.values():
        for k, proj in enumerate(layer.projections):
            degree = fan_out[(layer.name, k)] if fan_out is not None else for_projection(net, layer, proj).fan_out
            spiked = ~np.isnan(result.spike_times[proj.source]).reshape(n, -1)
            total += int(spiked.sum(axis=0, dtype=np.int64) @ degree)
    return total


def relu_macs(net: TTFSNetwork) -> int:
    """Multiply-accumulates per sample of the (folded) ReLU network: neurons times fan-in, summed."""
    total = 0
    for layer in net.layers.values():
        for proj in layer.projections:
            if proj.kind in ("dense", "conv"):
                total += layer.size * int(np.prod(proj.weight.shape[1:]))
            elif proj.kind == "identity":
                total += layer.size
    return total
