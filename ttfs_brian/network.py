"""The converted network: the single intermediate representation every engine consumes.

A :class:`TTFSNetwork` is a directed acyclic graph of populations (:class:`Layer`), stored in
topological order. Each layer receives one or more :class:`~ttfs_brian.projection.Projection` s
(dense, conv, identity or pool) from earlier layers, each with a synaptic delay. Every neuron fires
at most one spike inside its layer's window ``[t_min, t_max]`` (ms); a value ``x >= 0`` (units of
``tau_c``) is the spike time ``t = t_max - x * tau_c`` (:mod:`ttfs_brian.coding`).

Layer kinds and their arrays (per-sample shapes; ``P`` = the layer's neurons):

``input``    ``low``, ``high``: the affine map ``u = (x - low) / (high - low)``; ``u`` in [0, 1] is
             the value of the input spike.
``neuron``   (hidden, spiking) ``bias`` (per neuron, a bias *map* for convolutions), ``threshold``,
             ``scale`` (weight preprocessing: decoded value / scale = the original activation).
             Projection weights are ``J`` for variant ``exact``, ``W`` for ``sparse``.
``maxpool``  one ``pool`` projection; ``sign`` per channel: +1 max (earliest spike), -1 min (latest);
             ``scale``.
``output``   ``bias`` and, for ``exact``, ``drive`` (the constant current alpha); the logits are the
             membrane potentials at ``t_min`` of this layer.

Timing of a layer ``n`` with sources ``s`` (SPEC section 7): ``p`` is the source with the latest
``t_max``; a projection from ``s`` carries the delay ``t_max(p) - t_max(s) + D`` (``D`` the uniform
transmission delay ``meta["delay_ms"]``), so every spike arrives as if emitted by ``p``, and
``t_min(n) = t_max(p) + D``. Integration starts at ``t_on = min_s (t_min(s) + delay_s)``
(:func:`integration_start`); the neuron dynamics of both variants are in :mod:`ttfs_brian.neuron`.

File format (``save``/``load``, version :data:`FORMAT_VERSION`): one ``.npz`` archive. The entry
``__meta__`` is a JSON document ``{"format": "ttfs_brian.network", "version": 2, "variant", "tau_c",
"dt", "output", "meta", "composites", "layers": [...]}``; each layer is ``{"name", "kind", "shape",
"t_min", "t_max", "aliases", "attrs", "arrays", "projections": [{"source", "kind", "attrs", "delay",
"weight"}]}``. Array ``a`` of layer ``L`` is the entry ``"L/a"``, the weight of its ``k``-th projection
``"L/projection_k"``. Version 1 files (chains of ``linear``/``conv``/``maxpool`` layers) still load.
Loading needs NumPy only.
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
from .projection import Projection

FORMAT_NAME = "ttfs_brian.network"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
VARIANTS = ("exact", "sparse")
KINDS = ("input", "neuron", "maxpool", "output")


@dataclass
class Layer:
    """One population of the converted network.

    ``aliases`` are the names (module paths from ``model.named_modules()``, with ``_1``, ``_2`` for
    later calls of the same module, or torch.fx node names of functional calls) whose activations
    this layer carries; results are reported under every alias.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    t_min: float
    t_max: float
    projections: tuple[Projection, ...] = ()
    aliases: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def inputs(self) -> tuple[str, ...]:
        """Source layers, in the order of their first projection."""
        return tuple(dict.fromkeys(p.source for p in self.projections))

    @property
    def is_output(self) -> bool:
        return self.kind == "output"

    @property
    def is_spiking(self) -> bool:
        """True for layers whose neurons integrate synaptic input and fire (not pools, input, output)."""
        return self.kind == "neuron"


@dataclass
class TTFSNetwork:
    """A converted single-spike network (see the module docstring for the layer semantics).

    ``composites`` names values that span several layers (a ReLU applied to a channel
    concatenation gives one layer per part): alias -> layer names, concatenated along channels.
    """

    variant: str
    tau_c: float
    layers: dict[str, Layer]
    output: str
    dt: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    composites: dict[str, list[str]] = field(default_factory=dict)

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

    def sources(self, layer: Layer) -> list[tuple[Projection, Layer]]:
        """Each incoming projection of ``layer`` with its source layer."""
        return [(proj, self.layers[proj.source]) for proj in layer.projections]

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

    def names(self, layer: Layer) -> tuple[str, ...]:
        """Every name a layer's results are reported under: its own and its aliases."""
        return tuple(dict.fromkeys((layer.name, *layer.aliases)))

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

    @property
    def synapse_count(self) -> int:
        """Synapses per sample (see :mod:`ttfs_brian.connectivity`)."""
        from .connectivity import for_projection

        return sum(for_projection(self, layer, proj).n_synapses for layer in self.layers.values()
                   for proj in layer.projections)

    def summary(self) -> str:
        lines = [f"TTFSNetwork(variant={self.variant}, tau_c={self.tau_c} ms, dt={self.dt})"]
        for layer in self.layers.values():
            sources = ", ".join(f"{p.kind} {p.source}" + (f" +{p.delay:g} ms" if p.delay else "")
                                for p in layer.projections)
            lines.append(
                f"  {layer.name:<24} {layer.kind:<8} shape={layer.shape!s:<16} "
                f"window=[{layer.t_min:.4f}, {layer.t_max:.4f}] ms  from: {sources or '-'}")
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
            projections = []
            for k, proj in enumerate(layer.projections):
                projections.append({"source": proj.source, "kind": proj.kind, "attrs": proj.attrs,
                                    "delay": proj.delay, "weight": proj.weight is not None})
                if proj.weight is not None:
                    arrays[f"{layer.name}/projection_{k}"] = np.asarray(proj.weight)
            layers_meta.append({
                "name": layer.name, "kind": layer.kind, "shape": list(layer.shape), "t_min": layer.t_min,
                "t_max": layer.t_max, "aliases": list(layer.aliases), "attrs": layer.attrs,
                "arrays": sorted(layer.arrays), "projections": projections,
            })
            for key, value in layer.arrays.items():
                arrays[f"{layer.name}/{key}"] = np.asarray(value)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "variant": self.variant, "tau_c": self.tau_c,
                  "dt": self.dt, "output": self.output, "meta": self.meta, "composites": self.composites,
                  "layers": layers_meta}
        with open(path, "wb") as handle:
            np.savez_compressed(handle, __meta__=np.array(json.dumps(header)), **arrays)
        return path


def integration_start(net: TTFSNetwork, layer: Layer) -> float:
    """``t_on`` (ms): the earliest arrival any input of ``layer`` can have, ``min_s (t_min(s) + delay_s)``."""
    return min(net.layers[p.source].t_min + p.delay for p in layer.projections)


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
            if version not in READABLE_VERSIONS:
                raise NetworkFileError(
                    f"{path} has network format version {version}; this ttfs_brian reads versions "
                    f"{READABLE_VERSIONS}. Convert the model again with this version (ttfs-brian convert).")
            read_layer = _layer_v1 if version == 1 else _layer_v2
            layers = {entry["name"]: read_layer(entry, archive) for entry in header["layers"]}
            return TTFSNetwork(variant=header["variant"], tau_c=float(header["tau_c"]), layers=layers,
                               output=header["output"], dt=header["dt"], meta=header["meta"],
                               composites=header.get("composites", {}))
    except NetworkFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError, TypeError, AttributeError) as exc:
        raise NetworkFileError(f"{path} is corrupt or not a ttfs_brian network file ({type(exc).__name__}: {exc}); "
                               "convert the model again") from None


def _layer_v2(entry: dict[str, Any], archive) -> Layer:
    name = entry["name"]
    projections = tuple(
        Projection(p["source"], p["kind"], archive[f"{name}/projection_{k}"] if p["weight"] else None, p["attrs"],
                   float(p["delay"]))
        for k, p in enumerate(entry["projections"]))
    return Layer(name, entry["kind"], tuple(entry["shape"]), float(entry["t_min"]), float(entry["t_max"]),
                 projections, tuple(entry["aliases"]), entry["attrs"],
                 {key: archive[f"{name}/{key}"] for key in entry["arrays"]})


def _layer_v1(entry: dict[str, Any], archive) -> Layer:
    """A version-1 layer (a chain: kinds linear/conv/maxpool, the weight among the arrays) as a population."""
    name = entry["name"]
    arrays = {key: archive[f"{name}/{key}"] for key in entry["arrays"]}
    attrs = dict(entry["attrs"])
    kind = entry["kind"]
    reference = attrs.get("reference", {})
    if "from_input" in reference:
        attrs["reference"] = {"derived": reference["from_input"],
                              **{k: v for k, v in reference.items() if k != "from_input"}}
    projections: tuple[Projection, ...] = ()
    if kind in ("linear", "conv"):
        attrs.pop("avgpool", None)
        conv = {key: attrs.pop(key) for key in ("stride", "padding", "dilation", "groups") if key in attrs}
        projections = (Projection(entry["inputs"][0], "dense" if kind == "linear" else "conv", arrays.pop("weight"),
                                  conv),)
        kind = "output" if attrs.pop("output", False) else "neuron"
    elif kind == "maxpool":
        pool = {key: attrs.pop(key) for key in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
        projections = (Projection(entry["inputs"][0], "pool", None, pool),)
    return Layer(name, kind, tuple(entry["shape"]), float(entry["t_min"]), float(entry["t_max"]), projections,
                 tuple(entry["aliases"]), attrs, arrays)
