"""ttfs_brian: exact ReLU -> time-to-first-spike conversion, simulated analytically and in Brian2.

>>> net = ttfs_brian.convert(model, calibration_images, variant="exact")
>>> res = ttfs_brian.simulate(net, test_images)            # analytic engine
>>> ttfs_brian.verify(net, model, test_images)              # worst error against the ReLU network
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConversionError, InputError, NetworkFileError, TTFSBrianError, UnsupportedModuleError
from .network import TTFSNetwork, load

__all__ = ["convert", "simulate", "load", "verify", "compare", "TTFSNetwork", "SimulationResult",
           "ConversionError", "UnsupportedModuleError", "NetworkFileError", "InputError", "TTFSBrianError"]
__version__ = "0.1.0"


def convert(model, calibration, **kwargs: Any) -> TTFSNetwork:
    """See :func:`ttfs_brian.convert.convert`."""
    from .converter import convert as _convert
    return _convert(model, calibration, **kwargs)


def __getattr__(name: str) -> Any:
    # torch and pandas load only when an engine is used: reading a network file needs NumPy alone
    if name == "SimulationResult":
        from .result import SimulationResult
        return SimulationResult
    raise AttributeError(f"module 'ttfs_brian' has no attribute {name!r}")


def simulate(net: TTFSNetwork, x: np.ndarray, backend: str = "analytic", perturbation=None, indices=None,
             **kwargs: Any):
    """Run ``net`` on the batch ``x`` with the ``analytic`` engine or ``brian2``.

    ``perturbation``: a :class:`ttfs_brian.perturb.Perturbation` or a list of them (SPEC section 8);
    ``indices``: the samples' global indices, on which per-sample draws depend (default ``0 .. N-1``).
    Brian2 options (``device``, ``timing``, ``dt``, ``threads``, ``build_dir``, ...) go to
    :class:`ttfs_brian.brian.Simulator`.
    """
    if backend == "analytic":
        if kwargs:
            raise InputError(f"the analytic backend takes no options (got {sorted(kwargs)}); Brian2 options need "
                             "backend='brian2'")
        from .analytic import simulate_analytic
        return simulate_analytic(net, x, perturbation=perturbation, indices=indices)
    if backend == "brian2":
        from .brian import Simulator
        return Simulator(net, **kwargs).run(x, perturbation=perturbation, indices=indices)
    raise InputError(f"unknown backend {backend!r}; choose 'analytic' or 'brian2'")


def verify(net: TTFSNetwork, model, x, result=None):
    """Per-layer worst error of ``result`` (default: the analytic engine) against the float64 ReLU network."""
    from .reference import verify as _verify
    return _verify(net, model, x, result)


def compare(res_a, res_b):
    """See :func:`ttfs_brian.comparison.compare`: spike-by-spike differences between two results."""
    from .comparison import compare as _compare
    return _compare(res_a, res_b)
