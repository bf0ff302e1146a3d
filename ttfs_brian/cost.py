"""Operation counts: synaptic events of a simulation and multiply-accumulates of the ReLU network."""
from __future__ import annotations

import numpy as np

from .connectivity import Connectivity, for_projection
from .network import TTFSNetwork
from .result import SimulationResult


def synaptic_events(net: TTFSNetwork, result: SimulationResult,
                    connections: dict[tuple[str, int], Connectivity] | None = None) -> int:
    """Spikes times fan-out, summed over every projection and every sample.

    ``connections[(layer, k)]`` (the ``k``-th projection into ``layer``) saves rebuilding the
    connectivity when the caller already has it.
    """
    n = result.logits.shape[0]
    total = 0
    for layer in net.layers.values():
        for k, proj in enumerate(layer.projections):
            conn = connections[(layer.name, k)] if connections is not None else for_projection(net, layer, proj)
            spiked = ~np.isnan(result.spike_times[proj.source]).reshape(n, -1)
            total += int(spiked.sum(axis=0, dtype=np.int64) @ conn.fan_out)
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
