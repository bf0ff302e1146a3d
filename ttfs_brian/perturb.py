"""Perturbations: noise, timing jitter, mismatch and leak, with the same realisation in every engine (SPEC §8).

A :class:`Perturbation` names a kind, a level and a seed; several combine as a list. Each kind is
applied in one place, the same for the analytic engine and Brian2:

- per trial (a fixed pattern, like device mismatch) and deterministic kinds change the converted
  network itself (:func:`perturb_network`: ``alpha_mismatch``, ``threshold_mismatch``,
  ``weight_noise``, ``weight_bits``, and the transmission latency of ``spike_jitter``);
- per-sample kinds act on spikes as they leave their neurons (:func:`departures`: ``input_jitter``,
  ``spike_jitter``, ``time_bits``, ``drop``);
- ``leak`` changes the neuron's dynamics (:mod:`ttfs_brian.neuron`), ``membrane_noise`` is Brian2 only.

**Realisations.** Every draw is a pure function of (seed, kind, layer, neuron, and for per-sample
kinds the sample's global index): a counter-based hash (SplitMix64) turned into uniform and normal
numbers, so a draw never depends on the batch size, the replicas, the rounds, or how a sweep is
sharded, and both engines see the same noise. Pass the samples' global indices as ``indices``.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

from .errors import InputError
from .network import Layer, TTFSNetwork

KINDS: dict[str, str] = {
    "input_jitter": "per sample",
    "spike_jitter": "per sample",
    "alpha_mismatch": "per trial",
    "threshold_mismatch": "per trial",
    "weight_noise": "per trial",
    "weight_bits": "deterministic",
    "time_bits": "deterministic",
    "drop": "per sample",
    "leak": "deterministic",
    "membrane_noise": "per sample",
    "synaptic_tau": "deterministic",
    "conductance": "deterministic",
    "delay_mismatch": "per trial",
    "release_failure": "per sample",
}
"""Every kind and when it is drawn."""

BRIAN2_ONLY = ("membrane_noise",)
OPTIONS = {"spike_jitter": {"latency_ms"}, "time_bits": {"resolution_ms"}, "delay_mismatch": {"latency_ms"},
           "conductance": {"inhibitory_reversal"}}
TIME_CONSTANTS = ("leak", "synaptic_tau")
"""Kinds whose level is a time constant in ms: ``inf`` is no perturbation, smaller is more."""
SYNAPTIC = ("synaptic_tau", "conductance", "delay_mismatch", "release_failure")
"""Kinds that act on each synapse (not on a neuron or a whole spike): both engines treat every synapse apart."""
INHIBITORY_REVERSAL = 1.0 / 7.0
"""Default ``|E_inh| / E_exc`` of ``conductance``: 10 mV below rest against 70 mV above it (rest -70 mV,
``E_exc`` 0 mV, ``E_inh`` -80 mV)."""


@dataclass(frozen=True, init=False)
class Perturbation:
    """One perturbation: ``kind`` (a key of :data:`KINDS`), its ``level`` and ``seed``; times in ms.

    ``input_jitter``        ``t_in <- t_in + eps``, ``eps ~ N(0, level^2)``, per sample and input neuron.
    ``spike_jitter``        a hidden spike leaves its neuron at ``t_i + D + eps``, ``eps ~ N(0, level^2)``
                            truncated at ``-D``; ``D = latency_ms`` (default 0) delays every projection and
                            shifts every later window by ``D`` per layer, so the jitter stays causal.
    ``alpha_mismatch``      ``alpha_i <- alpha_i (1 + eps_i)``, ``eps ~ N(0, level^2)`` per hidden neuron (the
                            ``exact`` neuron's drive from ``t_on``; ``sparse``'s drive after ``t_min``); ``J``
                            and ``theta`` keep the nominal alpha.
    ``threshold_mismatch``  ``theta_i <- theta_i + eps_i``, ``eps ~ N(0, level^2)`` per hidden neuron.
    ``weight_noise``        ``J_ij <- J_ij (1 + eps_ij)``, ``eps ~ N(0, level^2)`` per stored weight (a
                            convolution's shared kernel entries, as hardware storing one kernel would).
    ``weight_bits``         every ``J`` rounded to ``2^level`` levels spanning ``[min J, max J]`` of its layer.
    ``time_bits``           a spike leaves at its time rounded up (so never before its threshold crossing)
                            to ``2^level`` levels across its layer's window, or to multiples of
                            ``resolution_ms`` from the window's start when that option is given.
    ``drop``                each emitted spike (input or hidden) is lost with probability ``level``.
    ``leak``                ``dV/dt = -V / tau_m + rate``, ``tau_m = level`` (ms; ``inf`` is no leak).
    ``membrane_noise``      ``dV = (...) dt + level sqrt(2 / tau_c) dW`` (Brian2, grid timing only).
    ``synaptic_tau``        current-based synapses with exponential currents: an input arriving at ``a_j`` drives
                            ``J_ij exp(-(t - a_j) / tau_s)`` instead of a step ``J_ij``, so it adds
                            ``J_ij tau_s (1 - exp(-(t - a_j) / tau_s)) / tau_c`` to ``V`` (``tau_s = level`` ms;
                            ``inf`` is today's step). The drive ``alpha`` stays constant; ``exact``'s zero-padded
                            inputs are synapses too, arriving at ``t_min``.
    ``conductance``         conductance-based synapses, ``I_j = g_j (E_j - V)`` with ``g_j = J_ij / E_j``, so that
                            ``I_j = J_ij`` at rest (``V = 0``): ``E_exc = theta_i / level`` for excitatory and
                            ``E_inh = -inhibitory_reversal theta_i / level`` for inhibitory synapses (option,
                            default 1/7); ``level = theta / E_exc`` in ``[0, 1)``, 0 is today's current-based network.
                            The output layer, a readout without a threshold, keeps current-based synapses.
    ``delay_mismatch``      every synapse's delay gets ``delta_ij ~ N(0, level^2)`` ms, drawn once per trial,
                            truncated at ``-D`` so that no spike arrives before it was sent (``D = latency_ms``,
                            default 0, delays every projection as for ``spike_jitter``) and rounded to the
                            network's ``dt`` (a simulator's spike queue delivers whole steps).
    ``release_failure``     each spike fails to reach each of its targets on its own with probability ``level``
                            (per synapse and per sample; ``drop`` loses a spike at every target).
    """

    kind: str
    level: float
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(self, kind: str, level: float, seed: int = 0, options: dict[str, Any] | None = None,
                 **more: Any) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "seed", int(seed))
        object.__setattr__(self, "options", {**(options or {}), **more})
        self._check()

    def _check(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown perturbation kind {self.kind!r}; choose one of {sorted(KINDS)}")
        try:
            level = float(self.level)
        except (TypeError, ValueError):
            raise InputError(f"perturbation {self.kind}: level must be a number, got {self.level!r}") from None
        if math.isnan(level) or level < 0 or (math.isinf(level) and self.kind not in TIME_CONSTANTS):
            raise InputError(f"perturbation {self.kind}: level must be a finite number >= 0 (leak, synaptic_tau: > 0, "
                             f"inf allowed), got {self.level!r}")
        if self.kind in ("drop", "release_failure") and level > 1:
            raise InputError(f"perturbation {self.kind}: level is a probability in [0, 1], got {level}")
        if self.kind in TIME_CONSTANTS and level <= 0:
            raise InputError(f"perturbation {self.kind}: level is a time constant in ms and must be > 0 (inf: none)")
        if self.kind == "conductance" and level >= 1:
            raise InputError(f"perturbation conductance: level is theta / E_exc and must be in [0, 1) (a threshold at "
                             f"or beyond the excitatory reversal potential can never be reached), got {level}")
        if self.options.get("inhibitory_reversal", 1.0) <= 0:
            raise InputError("perturbation conductance: inhibitory_reversal (|E_inh| / E_exc) must be > 0")
        unknown = set(self.options) - OPTIONS.get(self.kind, set())
        if unknown:
            raise InputError(f"perturbation {self.kind} has no options {sorted(unknown)}; it takes "
                             f"{sorted(OPTIONS.get(self.kind, set())) or 'none'}")
        for key, value in self.options.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"perturbation {self.kind}: option {key} must be a finite number >= 0, got {value!r}")
        object.__setattr__(self, "level", level)

    @property
    def is_identity(self) -> bool:
        """True when this perturbation changes nothing (level 0, no latency; infinite leak)."""
        if self.kind in TIME_CONSTANTS:
            return math.isinf(self.level)
        if self.kind in ("weight_bits", "time_bits"):
            return self.level == 0 and not self.options.get("resolution_ms")
        return self.level == 0 and not self.options.get("latency_ms")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "level": self.level, "seed": self.seed, **self.options}


def as_list(perturbation: Perturbation | Iterable[Perturbation] | None) -> list[Perturbation]:
    """``None``, one perturbation or several, as a list without the ones that change nothing."""
    if perturbation is None:
        return []
    items = [perturbation] if isinstance(perturbation, Perturbation) else list(perturbation)
    for item in items:
        if not isinstance(item, Perturbation):
            raise InputError(f"perturbation must be a ttfs_brian.perturb.Perturbation, got {type(item).__name__}")
    kinds = [p.kind for p in items]
    if len(set(kinds)) != len(kinds):
        raise InputError(f"each perturbation kind may appear once, got {kinds}")
    return [p for p in items if not p.is_identity]


def find(perturbations: Sequence[Perturbation], kind: str) -> Perturbation | None:
    return next((p for p in perturbations if p.kind == kind), None)


# --------------------------------------------------------------------------- counter-based draws
def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the point
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _code(name: str) -> int:
    return zlib.crc32(name.encode())


def uniform(seed: int, *keys: Any) -> np.ndarray:
    """Uniform numbers in (0, 1), a pure function of ``seed`` and the broadcast ``keys`` (strings or integers)."""
    h = np.asarray(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    for key in keys:
        value = _code(key) if isinstance(key, str) else key
        h = _splitmix(h ^ np.asarray(value, dtype=np.uint64))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def normal(seed: int, *keys: Any, low: float = -np.inf) -> np.ndarray:
    """Standard normal numbers (truncated below at ``low``) from the same keys as :func:`uniform`."""
    u = uniform(seed, *keys)
    if np.isfinite(low):
        floor = ndtr(low)
        u = floor + u * (1.0 - floor)
    return ndtri(u)


# --------------------------------------------------------------------------- the network (per trial)
def perturb_network(net: TTFSNetwork, perturbations: Sequence[Perturbation]) -> TTFSNetwork:
    """The network with the per-trial and deterministic perturbations applied (a new object)."""
    latency = total_latency(perturbations)
    if latency:
        net = with_latency(net, latency)
    changes = {kind: find(perturbations, kind) for kind in
               ("alpha_mismatch", "threshold_mismatch", "weight_noise", "weight_bits")}
    if not any(changes.values()):
        return net
    layers = {}
    for layer in net.layers.values():
        if layer.kind in ("neuron", "output"):
            layer = _perturb_layer(net, layer, changes)
        layers[layer.name] = layer
    return replace(net, layers=layers)


def _perturb_layer(net: TTFSNetwork, layer: Layer, changes: dict[str, Perturbation | None]) -> Layer:
    arrays = dict(layer.arrays)
    neurons = np.arange(layer.size).reshape(layer.shape)
    alpha, theta = changes["alpha_mismatch"], changes["threshold_mismatch"]
    if layer.kind == "neuron" and alpha is not None:
        nominal = np.asarray(arrays.get("alpha", np.ones(layer.shape)), dtype=np.float64)
        arrays["alpha"] = nominal * (1 + alpha.level * normal(alpha.seed, alpha.kind, layer.name, neurons))
    if layer.kind == "neuron" and theta is not None:
        arrays["threshold"] = arrays["threshold"] + theta.level * normal(theta.seed, theta.kind, layer.name, neurons)
    projections = list(layer.projections)
    noise = changes["weight_noise"]
    if noise is not None:
        projections = [p if p.weight is None else p.with_weight(
            p.weight * (1 + noise.level * normal(noise.seed, noise.kind, layer.name, k,
                                                  np.arange(p.weight.size).reshape(p.weight.shape))))
            for k, p in enumerate(projections)]
    bits = changes["weight_bits"]
    if bits is not None and any(p.weight is not None for p in projections):
        weights = np.concatenate([p.weight.reshape(-1) for p in projections if p.weight is not None])
        low, high = float(weights.min()), float(weights.max())
        step = (high - low) / max(2 ** bits.level - 1, 1)
        if step > 0:
            projections = [p if p.weight is None else p.with_weight(low + np.round((p.weight - low) / step) * step)
                           for p in projections]
    return replace(layer, projections=tuple(projections), arrays=arrays)


def total_latency(perturbations: Sequence[Perturbation]) -> float:
    """The transmission latency (ms) the perturbations add to every projection (``latency_ms`` of ``spike_jitter``
    and ``delay_mismatch``, which add up)."""
    return float(sum(p.options.get("latency_ms", 0.0) for p in perturbations))


def with_latency(net: TTFSNetwork, latency: float) -> TTFSNetwork:
    """Every projection delayed by ``latency`` more (ms): each layer's window moves later by ``latency`` times
    the length of its longest path from the input; thresholds and weights are unchanged (SPEC section 7)."""
    shift: dict[str, float] = {}
    layers = {}
    for layer in net.layers.values():
        if not layer.projections:
            shift[layer.name] = 0.0
            layers[layer.name] = layer
            continue
        shift[layer.name] = max(shift[p.source] for p in layer.projections) + latency
        moved = shift[layer.name]
        projections = tuple(replace(p, delay=p.delay + moved - shift[p.source]) for p in layer.projections)
        layers[layer.name] = replace(layer, t_min=layer.t_min + moved, t_max=layer.t_max + moved,
                                     projections=projections)
    meta = {**net.meta, "delay_ms": net.meta.get("delay_ms", 0.0) + latency}
    return replace(net, layers=layers, meta=meta)


# --------------------------------------------------------------------------- spikes (per sample)
@dataclass(frozen=True)
class Departure:
    """How the spikes of one layer leave their neurons, for a batch: ``t_dep = ceil_grid(t) + eps``; lost where
    ``dropped``. ``grid`` is ``(origin, step)`` of the time quantization or ``None``."""

    eps: np.ndarray | None
    dropped: np.ndarray | None
    grid: tuple[float, float] | None

    def apply(self, times: np.ndarray) -> np.ndarray:
        """Departure times of spikes at ``times`` (ms; NaN = no spike, also the result for a lost spike)."""
        out = np.asarray(times, dtype=np.float64)
        if self.grid is not None:
            origin, step = self.grid
            out = origin + np.ceil((out - origin) / step - 1e-9) * step
        if self.eps is not None:
            out = out + self.eps
        if self.dropped is not None:
            out = np.where(self.dropped, np.nan, out)
        return out


def departure(net: TTFSNetwork, layer: Layer, perturbations: Sequence[Perturbation],
              indices: np.ndarray) -> Departure | None:
    """The departure rule of ``layer`` (input or hidden) for the samples ``indices``, or ``None``."""
    if layer.kind not in ("input", "neuron"):
        return None
    neurons = np.arange(layer.size).reshape(1, *layer.shape)
    samples = np.asarray(indices, dtype=np.int64).reshape(-1, *([1] * len(layer.shape)))
    eps = dropped = grid = None
    jitter = find(perturbations, "input_jitter" if layer.kind == "input" else "spike_jitter")
    if jitter is not None and jitter.level > 0:
        latency = float(jitter.options.get("latency_ms", 0.0))
        low = -latency / jitter.level if layer.kind == "neuron" else -np.inf
        eps = jitter.level * normal(jitter.seed, jitter.kind, layer.name, samples, neurons, low=low)
    drop = find(perturbations, "drop")
    if drop is not None and drop.level > 0:
        dropped = uniform(drop.seed, drop.kind, layer.name, samples, neurons) < drop.level
    bits = find(perturbations, "time_bits")
    if bits is not None:
        step = bits.options.get("resolution_ms") or (layer.t_max - layer.t_min) / 2 ** bits.level
        grid = (layer.t_min, float(step))
    if eps is None and dropped is None and grid is None:
        return None
    return Departure(eps, dropped, grid)


# --------------------------------------------------------------------------- synapses (per trial, per sample)
def synapse_keys(layer: Layer, k: int, pre: np.ndarray, post: np.ndarray) -> tuple:
    """The draw keys of the synapses ``pre -> post`` (flat neuron indices) of projection ``k`` into ``layer``:
    both engines name a synapse by its two neurons, whatever order they store it in."""
    return layer.name, k, np.asarray(pre, dtype=np.int64), np.asarray(post, dtype=np.int64)


def delay_offsets(perturbation: Perturbation, net: TTFSNetwork, layer: Layer, k: int, pre: np.ndarray,
                  post: np.ndarray) -> np.ndarray:
    """``delay_mismatch``: each synapse's extra delay (ms), ``N(0, level^2)`` truncated at ``-latency_ms`` and rounded
    to the network's ``dt`` (unrounded for a network converted without one)."""
    if perturbation.level == 0:
        return np.zeros(np.broadcast(pre, post).shape)
    latency = float(perturbation.options.get("latency_ms", 0.0))
    delta = perturbation.level * normal(perturbation.seed, perturbation.kind, *synapse_keys(layer, k, pre, post),
                                        low=-latency / perturbation.level)
    if net.dt:
        # rounded towards the truncation point's side never below it: -latency is a multiple of dt
        delta = np.maximum(np.round(delta / net.dt) * net.dt, -latency)
    return delta


def release_failures(perturbation: Perturbation, layer: Layer, k: int, pre: np.ndarray, post: np.ndarray,
                     samples: np.ndarray) -> np.ndarray:
    """``release_failure``: whether the transmission of a spike of sample ``samples`` through synapse ``pre -> post``
    fails. One uniform number per synapse ``u`` (per trial) and one per sample and projection ``r`` decide it:
    it fails when ``frac(u + r) < level``. For a given sample the ``frac(u + r)`` of all synapses are independent
    and uniform, so each fails on its own with probability ``level``; and a simulator needs only ``u`` per synapse and
    ``r`` per sample, not a table of synapses x samples. The price: within one trial the samples' failure sets are
    rotations of one another (two synapses with close ``u`` tend to fail in the same samples), like a fixed pattern
    of the trial; across trials ``u`` is drawn anew."""
    u = release_unit(perturbation, layer, k, pre, post)
    return np.mod(u + release_key(perturbation, samples), 1.0) < perturbation.level


def release_key(perturbation: Perturbation, samples: np.ndarray) -> np.ndarray:
    """``r`` of :func:`release_failures`: one uniform number per sample (the units ``u`` already differ between
    synapses, projections and layers, so one key serves the whole network)."""
    return uniform(perturbation.seed, perturbation.kind, "sample", np.asarray(samples, dtype=np.int64))


def reversal_scale(layer: Layer) -> np.ndarray:
    """``theta_i`` per neuron of a hidden layer, to which ``conductance`` scales the reversal potentials
    (``E_exc = theta_i / level``); a threshold at or below 0 (a perturbed one) takes 1e-3 of the layer's largest."""
    theta = np.asarray(layer.arrays["threshold"], dtype=np.float64).reshape(-1)
    return np.maximum(theta, 1e-3 * max(float(np.abs(theta).max(initial=0.0)), 1e-12))


def release_unit(perturbation: Perturbation, layer: Layer, k: int, pre: np.ndarray, post: np.ndarray) -> np.ndarray:
    """``u`` of :func:`release_failures`: one uniform number per synapse."""
    return uniform(perturbation.seed, perturbation.kind, *synapse_keys(layer, k, pre, post))
