"""Brian2 backend: the converted network as Brian2 ``NeuronGroup``/``Synapses``, exact to the spike time.

- :mod:`~ttfs_brian.brian.equations`: every equation string (read against SPEC sections 3-4, 6);
- :mod:`~ttfs_brian.brian.connectivity`: synapse index arithmetic for linear, conv and max-pool layers;
- :mod:`~ttfs_brian.brian.simulator`: :class:`Simulator` (runtime, ``cpp_standalone``,
  ``cuda_standalone``; ``precise`` or ``grid`` timing) returning a
  :class:`~ttfs_brian.result.SimulationResult`.

Brian2 itself is imported lazily, when a simulator first builds its network.
"""
from __future__ import annotations

from .simulator import DEVICES, Simulator
from .equations import TIMINGS

__all__ = ["DEVICES", "TIMINGS", "Simulator", "simulate_brian"]


def simulate_brian(net, x, **kwargs):
    """One-shot convenience: ``Simulator(net, **kwargs).run(x)``."""
    return Simulator(net, **kwargs).run(x)
