"""The folded ReLU graph as populations and projections: the converted network before its timing.

Every value of the graph is tracked as a linear function of populations (the outputs of ReLUs and
pools, and the input): a list of channel *parts* (several after a concatenation), each a sum of
*terms* (projections from a population) plus a bias. A ReLU turns each part into a population whose
projections are the part's terms; a max pool of a population (times a per-channel factor) becomes a
pool population; Linear and Conv2d turn identity terms into dense and conv projections (folding any
per-channel factor and the bias map, SPEC section 5); an addition concatenates terms (a residual
layer gets one projection per branch, SPEC section 7); ``adaptive_avgpool`` that is not a plain
average pool is composed into the Linear after it. What cannot be expressed that way (a Linear/Conv
applied to another's output with no ReLU between them, a max pool of values that can be negative)
is a :class:`~ttfs_brian.errors.ConversionError` naming the operation.

The result is a list of :class:`~ttfs_brian.network.Layer` s with NaN windows and the ReLU
network's own weights ``W`` and biases; :func:`forward` evaluates it in float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from . import evaluate
from .errors import ConversionError
from .graph import Graph, Op, consumers, conv_attrs
from .network import Layer
from .projection import Projection, channel_values, input_channel_factor


@dataclass(frozen=True)
class PendingMean:
    """``weight[c] * A @ x[c]`` per channel ``c`` of the population ``source``: an adaptive average pool
    (``A``: output positions x input positions) that a following Linear absorbs."""

    source: str
    matrix: np.ndarray
    weight: np.ndarray


Term = Projection | PendingMean


@dataclass
class Part:
    """A block of channels (features) of a value: ``sum(terms) + bias``."""

    shape: tuple[int, ...]
    terms: list[Term]
    bias: np.ndarray
    origin: Op  # the op that computed it (names, errors, references)

    def plain_population(self) -> str | None:
        """The population this part equals exactly (one identity term of weight 1, no bias), if any."""
        if (len(self.terms) == 1 and isinstance(self.terms[0], Projection) and self.terms[0].kind == "identity"
                and np.all(self.terms[0].weight == 1.0) and not np.any(self.bias)):
            return self.terms[0].source
        return None

    def weighted(self) -> bool:
        """True when a term is a Linear/Conv output (a pre-activation that no linear map may consume)."""
        return any(isinstance(t, Projection) and t.kind in ("dense", "conv") for t in self.terms)


@dataclass
class Lowered:
    """Populations in topological order (the output last) and multi-part aliases."""

    layers: dict[str, Layer]
    composites: dict[str, list[str]] = field(default_factory=dict)


def lower(graph: Graph) -> Lowered:
    """Populations and projections of a folded graph (see the module docstring)."""
    return _Lowering(graph).run()


class _Lowering:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.users = consumers(graph)
        self.layers: dict[str, Layer] = {}
        self.values: dict[str, list[Part]] = {}
        self.composites: dict[str, list[str]] = {}

    def run(self) -> Lowered:
        for op in self.graph:
            handler = getattr(self, f"_{op.kind}", None)
            if handler is None:
                raise ConversionError(f"internal error: op kind {op.kind!r} ('{op.name}') reached the lowering")
            self.values[op.name] = handler(op, *[self.values[name] for name in op.inputs])
        self._output(self.graph[-1])
        return Lowered(self.layers, self.composites)

    # ----------------------------------------------------------------- populations
    def _population(self, name: str, kind: str, shape: tuple[int, ...], projections: list[Projection],
                    aliases: tuple[str, ...], reference: dict | None, arrays: dict[str, np.ndarray]) -> str:
        name = name.replace("/", ".")
        unique, k = name, 1
        while unique in self.layers:
            unique, k = f"{name}_{k}", k + 1
        attrs = {} if reference is None else {"reference": reference}
        self.layers[unique] = Layer(unique, kind, shape, np.nan, np.nan, tuple(_merge(projections)), aliases, attrs,
                                    arrays)
        return unique

    def _identity(self, population: str, shape: tuple[int, ...], origin: Op) -> Part:
        return Part(shape, [Projection(population, "identity", np.ones(shape))], np.zeros(shape), origin)

    def _activate(self, part: Part, name: str, aliases: tuple[str, ...], reference: dict) -> str:
        """A population ``relu(part)``."""
        if any(isinstance(t, PendingMean) for t in part.terms):
            raise ConversionError(f"{part.origin.describe()} (adaptive average pooling to a size that does not "
                                  "divide the input) must be followed by Flatten and Linear, which absorb it")
        return self._population(name, "neuron", part.shape, list(part.terms), aliases, reference,
                                {"bias": part.bias.copy()})

    # ----------------------------------------------------------------- ops
    def _input(self, op: Op) -> list[Part]:
        self.layers["input"] = Layer("input", "input", op.shape, np.nan, np.nan)
        return [self._identity("input", op.shape, op)]

    def _affine(self, op: Op, value: list[Part]) -> list[Part]:
        scale, shift = op.params["scale"], op.params["shift"]
        return [_affine_part(part, scale[sl], shift[sl], op) for part, sl in _slices(value)]

    def _relu(self, op: Op, value: list[Part]) -> list[Part]:
        plain = value[0].plain_population() if len(value) == 1 else None
        if plain is not None:  # ReLU of non-negative values: the population itself
            layer = self.layers[plain]
            layer.aliases = tuple(dict.fromkeys(layer.aliases + op.aliases))
            return value
        base = op.aliases[0] if op.aliases else op.name
        parts = []
        for k, (part, sl) in enumerate(_slices(value)):
            origin = part.origin
            if "avgpool" in origin.attrs:  # a spiking average pool (see passes.avgpool_to_conv)
                reference = {"derived": "avgpool", **origin.attrs["avgpool"]}
            else:
                reference = {"node": op.source, "relu": True}
                if len(value) > 1:
                    reference["channels"] = [sl.start, sl.stop]
            name = base if len(value) == 1 else f"{base}.part{k}"
            population = self._activate(part, name, op.aliases if len(value) == 1 else (), reference)
            parts.append(self._identity(population, part.shape, op))
        self._compose(op, value, parts)
        return parts

    def _maxpool(self, op: Op, value: list[Part]) -> list[Part]:
        parts = []
        for k, (part, sl) in enumerate(_slices(value)):
            source, weight, shift = _per_channel_population(part)
            if source is None:
                source = self._pre_activation_pool(op, part)
                weight, shift = np.ones(part.shape[0]), np.zeros(part.shape[0])
            sign = np.where(weight < 0, -1.0, 1.0) * op.params["sign"][sl]
            name = (op.aliases[0] if op.aliases else op.name) + ("" if len(value) == 1 else f".part{k}")
            pooled = self._population(name, "maxpool", op.shape[:0] + (part.shape[0],) + op.shape[1:],
                                      [Projection(source, "pool", None, dict(op.attrs))],
                                      op.aliases if len(value) == 1 else (),
                                      {"derived": "maxpool", **op.attrs}, {"sign": sign})
            shape = self.layers[pooled].shape
            expand = (slice(None), None, None)
            parts.append(Part(shape, [Projection(pooled, "identity", np.broadcast_to(weight[expand], shape).copy())],
                              np.broadcast_to(shift[expand], shape).copy(), op))
        self._compose(op, value, parts)
        return parts

    def _compose(self, op: Op, value: list[Part], parts: list[Part]) -> None:
        """Aliases of an op whose output spans several populations (one per part of a concatenation)."""
        if len(value) > 1:
            for alias in op.aliases or (op.name,):
                self.composites[alias] = [p.terms[0].source for p in parts]

    def _pre_activation_pool(self, op: Op, part: Part) -> str:
        """``relu(maxpool(y)) == maxpool(relu(y))``: the population ``relu(y)``, when a ReLU alone follows."""
        users = self.users[op.name]
        if not (len(users) == 1 and users[0].kind == "relu"):
            raise ConversionError(
                f"{op.describe()} takes the maximum of {part.origin.describe()}, whose values can be negative, and "
                "no ReLU follows it; put a ReLU before the pool")
        origin = part.origin
        name = origin.aliases[0] if origin.aliases else origin.name
        return self._activate(part, name, origin.aliases, {"node": origin.source, "relu": True})

    def _adaptive_avgpool(self, op: Op, value: list[Part]) -> list[Part]:
        parts = []
        size = tuple(op.attrs["output_size"])
        for part, _ in _slices(value):
            source, weight, shift = _per_channel_population(part)
            if source is None:
                raise ConversionError(f"{op.describe()} must follow a ReLU or pool (it averages "
                                      f"{part.origin.describe()}, a Linear/Conv output)")
            in_hw = part.shape[1:]
            basis = torch.eye(in_hw[0] * in_hw[1], dtype=torch.float64).reshape(-1, 1, *in_hw)
            matrix = F.adaptive_avg_pool2d(basis, size).reshape(in_hw[0] * in_hw[1], -1).T.numpy()
            shape = (part.shape[0], *size)
            bias = np.broadcast_to(shift[:, None, None], shape).copy()
            parts.append(Part(shape, [PendingMean(source, matrix, weight)], bias, op))
        return parts

    def _flatten(self, op: Op, value: list[Part]) -> list[Part]:
        out = []
        for part in value:
            if part.weighted():
                raise ConversionError(f"{op.describe()} flattens {part.origin.describe()}, a Linear/Conv output with "
                                      "no ReLU yet; apply the ReLU before flattening")
            terms = [replace(t, weight=t.weight.reshape(-1)) if isinstance(t, Projection) else t for t in part.terms]
            out.append(Part((int(np.prod(part.shape)),), terms, part.bias.reshape(-1), part.origin))
        return out

    def _linear(self, op: Op, value: list[Part]) -> list[Part]:
        weight, terms = op.params["weight"], []
        for part, sl in _slices(value, flat=True):
            self._check_not_weighted(op, part)
            columns = weight[:, sl]
            for term in part.terms:
                if isinstance(term, PendingMean):
                    channels = term.weight.shape[0]
                    blocks = columns.reshape(len(columns), channels, -1) * term.weight[None, :, None]
                    dense = np.einsum("ocp,pq->ocq", blocks, term.matrix).reshape(len(columns), -1)
                    terms.append(Projection(term.source, "dense", dense))
                else:
                    terms.append(Projection(term.source, "dense", columns * term.weight.reshape(1, -1)))
        bias = op.params["bias"] + weight @ np.concatenate([p.bias.reshape(-1) for p in value])
        return [Part(op.shape, terms, bias, op)]

    def _conv(self, op: Op, value: list[Part]) -> list[Part]:
        weight, attrs = op.params["weight"], conv_attrs(op.attrs)
        if len(value) > 1 and attrs["groups"] != 1:  # as one group with zero weights between groups
            weight, attrs = _ungrouped(weight, attrs["groups"]), {**attrs, "groups": 1}
        terms = []
        for part, sl in _slices(value):
            self._check_not_weighted(op, part)
            columns = weight[:, sl] if len(value) > 1 else weight
            for term in part.terms:
                if isinstance(term, PendingMean):
                    raise ConversionError(f"{op.describe()} follows {part.origin.describe()} (adaptive average "
                                          "pooling that is not a plain average pool); only a Linear can absorb it")
                scale = channel_values(term.weight, f"the per-position factor before {op.describe()}")
                factor = input_channel_factor(scale, columns.shape, attrs["groups"])
                terms.append(Projection(term.source, "conv", columns * factor, dict(attrs)))
        bias_image = torch.as_tensor(np.concatenate([p.bias for p in value]))[None]
        bias = op.params["bias"] + F.conv2d(bias_image, torch.as_tensor(weight), **attrs)[0].numpy()
        return [Part(op.shape, terms, bias, op)]

    def _check_not_weighted(self, op: Op, part: Part) -> None:
        if part.weighted():
            raise ConversionError(
                f"{op.describe()} applies a linear map to {part.origin.describe()}, itself the output of a Linear/Conv "
                "with no ReLU in between; insert a ReLU or merge the two layers")

    def _add(self, op: Op, *values: list[Part]) -> list[Part]:
        """Sum term by term; operands split into channels differently (a concatenation added to a single tensor)
        are first cut at every boundary of either."""
        cuts = sorted({c for value in values for _, sl in _slices(value) for c in (sl.start, sl.stop)})
        aligned = [_cut(value, cuts, op) for value in values]
        return [Part(parts[0].shape, [t for p in parts for t in p.terms], sum(p.bias for p in parts), op)
                for parts in zip(*aligned)]

    def _cat(self, op: Op, *values: list[Part]) -> list[Part]:
        return [part for value in values for part in value]

    def _output(self, op: Op) -> None:
        value = self.values[op.name]
        if len(value) != 1 or not value[0].weighted() and value[0].plain_population() is not None:
            raise ConversionError(
                f"the model's output comes from {op.describe()} ({op.kind}); the converter needs the logits of a "
                "final Linear/Conv (remove a trailing ReLU or pool)")
        part = value[0]
        if any(isinstance(t, PendingMean) for t in part.terms):
            raise ConversionError(f"the model ends with adaptive average pooling {op.describe()}; end with a Linear")
        name = op.aliases[0] if op.aliases else op.name
        self._population(name, "output", part.shape, list(part.terms), op.aliases, None, {"bias": part.bias.copy()})


def _slices(value: list[Part], flat: bool = False) -> list[tuple[Part, slice]]:
    """Each part with the channels (``flat``: the features) it occupies."""
    out, start = [], 0
    for part in value:
        width = int(np.prod(part.shape)) if flat else part.shape[0]
        out.append((part, slice(start, start + width)))
        start += width
    return out


def _cut(value: list[Part], cuts: list[int], op: Op) -> list[Part]:
    """``value`` with its parts cut at the channel (or feature) indices ``cuts``."""
    out = []
    for part, sl in _slices(value):
        inner = [c for c in cuts if sl.start < c < sl.stop]
        for lo, hi in zip([sl.start, *inner], [*inner, sl.stop]):
            out.append(part if (lo, hi) == (sl.start, sl.stop) else _channels(part, lo - sl.start, hi - sl.start, op))
    return out


def _channels(part: Part, lo: int, hi: int, op: Op) -> Part:
    """Channels ``lo:hi`` of a part (features, for a flat one): each term restricted to them."""
    per = int(np.prod(part.shape[1:]))
    terms: list[Term] = []
    for term in part.terms:
        if isinstance(term, PendingMean):
            raise ConversionError(f"{op.describe()} splits the channels of {part.origin.describe()} (adaptive "
                                  "average pooling); only a Linear can absorb it")
        if term.kind == "identity":
            offset = int(term.attrs.get("offset", 0)) + lo * per
            terms.append(replace(term, weight=term.weight[lo:hi].copy(), attrs={**term.attrs, "offset": offset}))
        elif term.kind == "conv":
            terms.append(term.with_weight(term.weight[lo:hi]))
        else:
            terms.append(term.with_weight(term.weight[lo * per:hi * per]))
    return Part((hi - lo, *part.shape[1:]), terms, part.bias[lo:hi].copy(), part.origin)


def _ungrouped(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's weight as that of an ordinary one, zero between groups."""
    c_out, c_in_group = weight.shape[:2]
    full = np.zeros((c_out, c_in_group * groups, *weight.shape[2:]))
    per_group = c_out // groups
    for g in range(groups):
        full[g * per_group:(g + 1) * per_group, g * c_in_group:(g + 1) * c_in_group] = weight[g * per_group:(g + 1) * per_group]
    return full


def _affine_part(part: Part, scale: np.ndarray, shift: np.ndarray, op: Op) -> Part:
    terms: list[Term] = []
    for term in part.terms:
        if isinstance(term, PendingMean):
            per_channel = channel_values(scale, f"{op.describe()} after adaptive average pooling")
            terms.append(replace(term, weight=term.weight * per_channel))
        elif term.kind == "identity":
            terms.append(term.with_weight(term.weight * scale))
        elif term.kind == "dense":
            terms.append(term.with_weight(scale.reshape(-1, 1) * term.weight))
        else:
            per_channel = channel_values(scale, f"{op.describe()} after a convolution")
            terms.append(term.with_weight(per_channel[:, None, None, None] * term.weight))
    return Part(part.shape, terms, scale * part.bias + shift, op)


def _per_channel_population(part: Part) -> tuple[str | None, np.ndarray, np.ndarray]:
    """``(population, w, b)`` when ``part == w[c] * population + b[c]`` per channel; ``(None, ...)`` otherwise."""
    if len(part.terms) != 1 or not isinstance(part.terms[0], Projection) or part.terms[0].kind != "identity":
        return None, np.empty(0), np.empty(0)
    term = part.terms[0]
    try:
        weight = channel_values(term.weight, "")
        shift = channel_values(part.bias, "")
    except ConversionError:
        return None, np.empty(0), np.empty(0)
    return term.source, weight, shift


def _merge(projections: list[Projection]) -> list[Projection]:
    """One projection per (source, kind, geometry): weights of equal ones summed."""
    merged: dict[tuple, Projection] = {}
    for proj in projections:
        key = (proj.source, proj.kind, repr(sorted(proj.attrs.items())))
        if key in merged and proj.weight is not None:
            merged[key] = merged[key].with_weight(merged[key].weight + proj.weight)
        else:
            merged[key] = proj
    return list(merged.values())


def forward(layers: dict[str, Layer], u: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """Every population's values for inputs ``u`` in [0, 1] (float64): ``relu(sum of projections + bias)``,
    pools, and the output's ``sum + bias`` (the logits)."""
    u = torch.as_tensor(np.asarray(u, dtype=np.float64))
    values: dict[str, torch.Tensor] = {}
    for layer in layers.values():
        if layer.kind == "input":
            values[layer.name] = u
        elif layer.kind == "maxpool":
            proj = layer.projections[0]
            values[layer.name] = evaluate.pool(proj, values[proj.source], layer.arrays["sign"])
        else:
            total = torch.as_tensor(layer.arrays["bias"]).expand(u.shape[0], *layer.shape).clone()
            for proj in layer.projections:
                total += evaluate.apply(proj, values[proj.source], layer.shape)
            values[layer.name] = total if layer.kind == "output" else torch.relu(total)
    return values
