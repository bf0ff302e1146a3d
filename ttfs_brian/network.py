"""The converted network: the single intermediate representation every engine consumes.

A :class:`TTFSNetwork` is a directed acyclic graph of :class:`Layer` nodes, stored in
topological order. Each layer's neurons fire at most one spike inside the layer's window
``[t_min, t_max]`` (ms); a value ``x >= 0`` (in units of ``tau_c``) is the spike time
``t = t_max - x * tau_c``.

Layer kinds and the arrays they carry (per-sample shapes; ``P`` = neurons of the layer):

``input``
    ``low``, ``high``: the affine input map ``u = (x - low) / (high - low)``; ``u`` in [0, 1]
    is the value carried by the input spike.
``linear`` / ``conv`` (hidden, spiking)
    ``weight``: synaptic weights (``J`` for variant ``exact``, ``W`` for ``sparse``),
    ``(out, in)`` or ``(C_out, C_in / groups, kh, kw)``;
    ``bias``: the folded per-neuron bias ``b`` (shape of the layer, a bias *map* for conv);
    ``threshold``: per-neuron threshold ``theta``;
    ``scale``: per-neuron factor applied by weight preprocessing (decoded value / scale =
    activation of the original model).
``maxpool``
    ``sign``: +1 per channel for max (earliest spike), -1 for min (latest spike).
``linear`` / ``conv`` with ``attrs["output"] = True``
    ``weight``, ``bias`` and, for ``exact``, ``drive`` (the constant input current alpha).
    The logits are the membrane potentials at ``t_min`` of this layer.

Dynamics (times in units of ``tau_c``; for layer ``n`` with input layer ``p``, ``B_in`` and ``B``
are the window lengths of ``p`` and ``n``; an input spike at ``t_j`` carries ``x_j = (t_max(p) -
t_j) / tau_c``, clamped to ``[0, B_in]`` because integration starts at ``t_min(p)``):

``exact`` hidden neuron (SPEC section 3), for ``t >= t_min(p)``, ``V(t_min(p)) = 0``::

    dV/dt = 1 + sum_j J_ij H(t - max(t_j, t_min(p)))   (+ sum of J over zero-padded inputs, which
                                                          spike at t_max(p) = t_min(n))
    fire at the first t with V >= theta, or at t_max(n) if V never reached theta.

``sparse`` hidden neuron (SPEC section 4)::

    dV/dt = sum_j W_ij H(t - t_j)  for t < t_min(n);   dV/dt = 1  for t >= t_min(n)
    fire at the first t in [t_min(n), t_max(n)) with V >= theta; silence means value 0.

Max pool: the pooled neuron fires with the earliest spike of its pool (sign +1) or with the
latest (sign -1, silent if any input is silent). Output (``exact``): ``dV/dt = drive + sum_j
J_ij H(t - t_j)`` from ``t_min(p)``; (``sparse``): ``dV/dt = sum_j W_ij H(t - t_j)``; the logits
are ``V(t_min(out))`` (plus ``bias`` in ``sparse``). The values decoded from a layer are clipped
(and counted) when a spike comes before the layer's ``t_min``; ``exact`` also counts early
firing, a threshold crossing before ``t_min`` caused by the order of the input spikes.

File format (``save``/``load``, version :data:`FORMAT_VERSION`): one ``.npz`` archive. The
entry ``__meta__`` is a JSON document ``{"format": "ttfs_brian.network", "version": 1,
"variant", "tau_c", "dt", "output", "meta", "layers": [...]}`` where each layer is
``{"name", "kind", "inputs", "shape", "t_min", "t_max", "aliases", "attrs", "arrays"}``; the
array ``name`` of layer ``L`` is stored under the entry ``"L/name"``. Loading needs NumPy only.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NetworkFileError

FORMAT_NAME = "ttfs_brian.network"
FORMAT_VERSION = 1
VARIANTS = ("exact", "sparse")
KINDS = ("input", "linear", "conv", "maxpool")


@dataclass
class Layer:
    """One node of the converted network.

    ``aliases`` are the names (qualified module names from ``model.named_modules()``, or
    torch.fx node names for functional calls) whose activations this layer carries;
    results are reported under every alias.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    t_min: float
    t_max: float
    aliases: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def is_output(self) -> bool:
        return bool(self.attrs.get("output", False))

    @property
    def is_spiking(self) -> bool:
        """True for layers whose neurons integrate synaptic input and fire (not pools, input, output)."""
        return self.kind in ("linear", "conv") and not self.is_output


@dataclass
class TTFSNetwork:
    """A converted single-spike network (see the module docstring for the layer semantics)."""

    variant: str
    tau_c: float
    layers: dict[str, Layer]
    output: str
    dt: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
        if self.output not in self.layers:
            raise ValueError(f"output layer {self.output!r} is not in the network")

    # ----------------------------------------------------------------- structure
    @property
    def input(self) -> Layer:
        return next(layer for layer in self.layers.values() if layer.kind == "input")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.shape

    @property
    def output_layer(self) -> Layer:
        return self.layers[self.output]

    @property
    def num_classes(self) -> int:
        return self.output_layer.size

    def predecessor(self, layer: Layer) -> Layer:
        if len(layer.inputs) != 1:
            raise NotImplementedError(f"layer {layer.name!r} has {len(layer.inputs)} inputs; only chains are simulated")
        return self.layers[layer.inputs[0]]

    def window_length(self, layer: Layer) -> float:
        """Window length ``B`` of a layer in units of tau_c."""
        return (layer.t_max - layer.t_min) / self.tau_c

    def coded_layers(self) -> list[Layer]:
        """Layers whose neurons carry values as spike times: input, spiking layers and pools."""
        return [layer for layer in self.layers.values() if not layer.is_output]

    def _by_alias(self) -> dict[str, Layer]:
        table: dict[str, Layer] = {}
        for layer in self.coded_layers():
            for key in (layer.name, *layer.aliases):
                table.setdefault(key, layer)
        return table

    @property
    def windows(self) -> dict[str, tuple[float, float]]:
        """Layer name or alias -> ``(t_min, t_max)`` in ms (the output's is its readout time twice)."""
        out = {key: (layer.t_min, layer.t_max) for key, layer in self._by_alias().items()}
        out[self.output] = (self.output_layer.t_min, self.output_layer.t_max)
        return out

    @property
    def scales(self) -> dict[str, np.ndarray]:
        """Layer name or alias -> per-neuron factor of the weight preprocessing (ones in ``sparse``)."""
        return {
            key: layer.arrays.get("scale", np.ones(layer.shape))
            for key, layer in self._by_alias().items()
            if layer.kind != "input"
        }

    def layer_for(self, key: str) -> Layer:
        """The layer reported under ``key`` (a layer name or one of its aliases)."""
        table = self._by_alias()
        if key in table:
            return table[key]
        if key in self.layers:
            return self.layers[key]
        raise KeyError(f"no layer or alias {key!r}; known: {sorted(table)}")

    def summary(self) -> str:
        lines = [f"TTFSNetwork(variant={self.variant}, tau_c={self.tau_c} ms, dt={self.dt})"]
        for layer in self.layers.values():
            role = "output" if layer.is_output else layer.kind
            lines.append(
                f"  {layer.name:<24} {role:<8} shape={layer.shape!s:<16} "
                f"window=[{layer.t_min:.4f}, {layer.t_max:.4f}] ms  aliases={list(layer.aliases)}"
            )
        return "\n".join(lines)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the network to a versioned ``.npz`` file (format in the module docstring)."""
        path = Path(path)
        layers_meta = []
        arrays: dict[str, np.ndarray] = {}
        for layer in self.layers.values():
            if "/" in layer.name:
                raise ValueError(f"layer name {layer.name!r} must not contain '/'")
            layers_meta.append(
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "inputs": list(layer.inputs),
                    "shape": list(layer.shape),
                    "t_min": layer.t_min,
                    "t_max": layer.t_max,
                    "aliases": list(layer.aliases),
                    "attrs": layer.attrs,
                    "arrays": sorted(layer.arrays),
                }
            )
            for key, value in layer.arrays.items():
                arrays[f"{layer.name}/{key}"] = np.asarray(value)
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "variant": self.variant,
            "tau_c": self.tau_c,
            "dt": self.dt,
            "output": self.output,
            "meta": self.meta,
            "layers": layers_meta,
        }
        with open(path, "wb") as handle:
            np.savez_compressed(handle, __meta__=np.array(json.dumps(header)), **arrays)
        return path


def load(path: str | Path) -> TTFSNetwork:
    """Read a network written by :meth:`TTFSNetwork.save` (NumPy only, no torch)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"network file {path} does not exist")
    with open(path, "rb") as handle:  # closed on every path, also when NumPy fails half-way
        return _read(path, handle)


def _read(path: Path, handle) -> TTFSNetwork:
    try:
        archive = np.load(handle, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as exc:
        raise NetworkFileError(f"{path} is corrupt or not a ttfs_brian network file ({type(exc).__name__}: {exc}); "
                               "convert the model again") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise NetworkFileError(f"{path} holds a single array (.npy), not a network file: networks are .npz "
                               "archives written by TTFSNetwork.save or `ttfs-brian convert`")
    try:
        with archive:
            if "__meta__" not in archive.files:
                raise NetworkFileError(f"{path} is not a ttfs_brian network file (no __meta__ entry)")
            header = json.loads(str(archive["__meta__"]))
            if header.get("format") != FORMAT_NAME:
                raise NetworkFileError(f"{path} is not a ttfs_brian network file (format {header.get('format')!r})")
            version = header.get("version")
            if version != FORMAT_VERSION:
                raise NetworkFileError(
                    f"{path} has network format version {version}; this ttfs_brian reads version "
                    f"{FORMAT_VERSION}. Convert the model again with this version."
                )
            layers: dict[str, Layer] = {}
            for entry in header["layers"]:
                name = entry["name"]
                layers[name] = Layer(
                    name=name,
                    kind=entry["kind"],
                    inputs=tuple(entry["inputs"]),
                    shape=tuple(entry["shape"]),
                    t_min=float(entry["t_min"]),
                    t_max=float(entry["t_max"]),
                    aliases=tuple(entry["aliases"]),
                    attrs=entry["attrs"],
                    arrays={key: archive[f"{name}/{key}"] for key in entry["arrays"]},
                )
            return TTFSNetwork(variant=header["variant"], tau_c=float(header["tau_c"]), layers=layers,
                               output=header["output"], dt=header["dt"], meta=header["meta"])
    except NetworkFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError, TypeError, AttributeError) as exc:
        raise NetworkFileError(f"{path} is corrupt or not a ttfs_brian network file ({type(exc).__name__}: {exc}); "
                               "convert the model again") from None
