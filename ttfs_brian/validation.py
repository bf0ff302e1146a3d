"""Input checks shared by the converter and every engine (NumPy only, so the Brian2/CUDA side needs no torch)."""
from __future__ import annotations

import math

import numpy as np

from .errors import InputError
from .network import TTFSNetwork


def as_float64_array(data, what: str) -> np.ndarray:
    """``data`` (array or torch tensor) as float64 NumPy, rejecting NaN and Inf with a message naming ``what``."""
    if hasattr(data, "detach"):  # a torch tensor, without importing torch
        data = data.detach().cpu().numpy()
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not a numeric array ({exc})") from None
    bad = np.count_nonzero(~np.isfinite(array))
    if bad:
        raise InputError(f"{what} contains {bad} NaN or Inf values; remove or impute them first")
    return array


def finite(value, what: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a float that is finite and inside ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    too_low = low is not None and (number <= low if low_open else number < low)
    if not math.isfinite(number) or too_low or (high is not None and number > high):
        bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise InputError(f"{what} must be a finite number in {bounds}, got {value!r}")
    return number


def validate_inputs(net: TTFSNetwork, x) -> np.ndarray:
    """Inputs as float64 ``(N, *input_shape)`` with ``N >= 1``; NaN, Inf, empty batches and wrong shapes are errors."""
    array = as_float64_array(x, "input data")
    shape = net.input_shape
    if array.shape[1:] != tuple(shape):
        hint = " (a single sample? add a batch dimension: x[None])" if array.shape == tuple(shape) else ""
        raise InputError(f"inputs have shape {array.shape}; the network expects (N, {', '.join(map(str, shape))}){hint}")
    if array.shape[0] == 0:
        raise InputError("the input batch is empty (0 samples); pass at least one sample")
    return array


def sample_indices(indices: np.ndarray | None, n: int) -> np.ndarray:
    """The samples' global indices (``0 .. n-1`` by default), checked."""
    if indices is None:
        return np.arange(n)
    indices = np.asarray(indices)
    if indices.shape != (n,) or not np.issubdtype(indices.dtype, np.integer) or (indices < 0).any():
        raise InputError(f"indices must be {n} non-negative integers (one global index per sample), got shape "
                         f"{indices.shape} of {indices.dtype}")
    return indices.astype(np.int64)
