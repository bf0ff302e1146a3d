"""The user's files: a ReLU network (a ``torch.save``'d module or ``zoo:ARCH_DATASET``) and ``.npy`` arrays.

Anything else is a :class:`~ttfs_brian.errors.DataFileError` that names the file and the fix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataFileError


def load_model(spec: str):
    """A torch module from ``zoo:ARCH_DATASET`` or a ``torch.save``'d module file."""
    import torch

    from . import zoo

    if spec.startswith("zoo:"):
        arch, _, dataset = spec[4:].rpartition("_")
        if not arch:
            raise DataFileError(f"{spec!r}: use zoo:ARCH_DATASET, e.g. zoo:lenet5_mnist5k")
        return zoo.load_pretrained(arch, dataset)[0]
    path = Path(spec)
    if not path.exists():
        raise DataFileError(f"model file {path} does not exist")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many types for foreign or corrupt files
        raise DataFileError(f"cannot load {path} as a pickled torch module ({type(exc).__name__}: {exc}); save it "
                            "with torch.save(model, path) where the model's class is importable") from None
    if not isinstance(model, torch.nn.Module):
        raise DataFileError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module (a state_dict? save the "
                            "whole module with torch.save(model, path))")
    return model.eval()


def load_array(path: str, what: str = "data") -> np.ndarray:
    """A numeric ``.npy`` array; anything else is a :class:`DataFileError` naming the file."""
    file = Path(path)
    if not file.exists():
        raise DataFileError(f"{what} file {file} does not exist")
    try:
        array = np.load(file, allow_pickle=False)
    except Exception as exc:  # NumPy raises ValueError, OSError, EOFError, ... for foreign files
        raise DataFileError(f"{what} file {file} is not a .npy array ({type(exc).__name__}: {exc}); save the data "
                            "with numpy.save(path, array)") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise DataFileError(f"{what} file {file} is an .npz archive (a converted network?); pass a .npy array "
                            "saved with numpy.save(path, array)")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise DataFileError(f"{what} file {file} holds {array.dtype} values, not numbers")
    return array
