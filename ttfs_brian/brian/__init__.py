"""Brian2 backend: the converted network as Brian2 ``NeuronGroup``/``Synapses``, exact to the spike time.

- :mod:`~ttfs_brian.brian.simulator`: :class:`Simulator`, the facade (build once, run many batches);
- :mod:`~ttfs_brian.brian.devices`: one adapter per device (runtime, ``cpp_standalone``, ``cuda_standalone``);
- :mod:`~ttfs_brian.brian.layout`: replicas side by side and rounds one after the other (pure);
- :mod:`~ttfs_brian.brian.builder`: the Brian2 objects, named after the model's layers;
- :mod:`~ttfs_brian.brian.readout`: monitors -> :class:`~ttfs_brian.result.SimulationResult`;
- :mod:`~ttfs_brian.brian.structure` and :mod:`~ttfs_brian.brian.run_values`: what a compiled network
  supports (perturbations) and the values one run takes (inputs, per-trial values, per-round tables);
- :mod:`~ttfs_brian.brian.compile_cache`: compiled objects shared by every process of the machine;
- :mod:`~ttfs_brian.brian.equations`: every equation string (read against SPEC sections 3-4, 6-7);
- :mod:`~ttfs_brian.brian.toolchain`: make/nvcc workarounds, applied when a device is activated.

Brian2 itself is imported lazily, when a simulator first builds its network.
"""
from __future__ import annotations

from .devices import DEVICES
from .equations import TIMINGS
from .simulator import Simulator

__all__ = ["DEVICES", "TIMINGS", "Simulator", "simulate_brian"]


def simulate_brian(net, x, **kwargs):
    """One-shot convenience: ``Simulator(net, **kwargs).run(x)``."""
    return Simulator(net, **kwargs).run(x)
