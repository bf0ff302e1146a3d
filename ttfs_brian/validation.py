"""Input checks shared by the converter and every engine (NumPy only, so the Brian2/CUDA side needs no torch)."""
from __future__ import annotations

import numpy as np

from .network import TTFSNetwork


def as_float64_array(data, what: str) -> np.ndarray:
    """``data`` (array or torch tensor) as float64 NumPy, rejecting NaN and Inf with a message naming ``what``."""
    if hasattr(data, "detach"):  # a torch tensor, without importing torch
        data = data.detach().cpu().numpy()
    array = np.asarray(data, dtype=np.float64)
    bad = np.count_nonzero(~np.isfinite(array))
    if bad:
        raise ValueError(f"{what} contains {bad} NaN or Inf values; remove or impute them before conversion")
    return array


def validate_inputs(net: TTFSNetwork, x) -> np.ndarray:
    """Inputs as float64 ``(N, *input_shape)``; NaN, Inf and wrong shapes are errors."""
    array = as_float64_array(x, "input data")
    shape = net.input_shape
    if array.shape[1:] != tuple(shape):
        hint = " (a single sample? add a batch dimension: x[None])" if array.shape == tuple(shape) else ""
        raise ValueError(f"inputs have shape {array.shape}; the network expects (N, {', '.join(map(str, shape))}){hint}")
    return array


def encode_inputs(net: TTFSNetwork, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input values ``u = (x - low) / (high - low)`` clipped to [0, 1], and the mask of clipped inputs."""
    layer = net.input
    u = (data - layer.arrays["low"]) / (layer.arrays["high"] - layer.arrays["low"])
    clipped = (u < 0) | (u > 1)
    return np.clip(u, 0.0, 1.0), clipped
