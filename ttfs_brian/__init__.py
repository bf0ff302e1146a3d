"""ttfs_brian: exact ReLU -> time-to-first-spike conversion, simulated analytically and in Brian2.

>>> net = ttfs_brian.convert(model, calibration_images, variant="exact")
>>> res = ttfs_brian.simulate(net, test_images)            # analytic engine
>>> ttfs_brian.verify(net, model, test_images)              # worst error against the ReLU network
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .graph import ConversionError
from .network import NetworkFileError, TTFSNetwork, load
from .result import SimulationResult

__all__ = ["convert", "simulate", "load", "verify", "TTFSNetwork", "SimulationResult", "ConversionError",
           "NetworkFileError"]
__version__ = "0.1.0"


def convert(model, calibration, **kwargs: Any) -> TTFSNetwork:
    """See :func:`ttfs_brian.convert.convert`."""
    from .converter import convert as _convert
    return _convert(model, calibration, **kwargs)


def simulate(net: TTFSNetwork, x: np.ndarray, backend: str = "analytic", **kwargs: Any) -> SimulationResult:
    """Run ``net`` on the batch ``x`` with the ``analytic`` engine or ``brian2``.

    Brian2 options (``device``, ``timing``, ``dt``, ``threads``, ``build_dir``) go to
    :class:`ttfs_brian.brian.Simulator`.
    """
    if backend == "analytic":
        if kwargs:
            raise TypeError(f"the analytic backend takes no options (got {sorted(kwargs)})")
        from .analytic import simulate_analytic
        return simulate_analytic(net, x)
    if backend == "brian2":
        from .brian import Simulator
        return Simulator(net, **kwargs).run(x)
    raise ValueError(f"unknown backend {backend!r}; choose 'analytic' or 'brian2'")


def verify(net: TTFSNetwork, model, x, result: SimulationResult | None = None):
    """Per-layer worst error of ``result`` (default: the analytic engine) against the float64 ReLU network."""
    from .reference import verify as _verify
    return _verify(net, model, x, result)
