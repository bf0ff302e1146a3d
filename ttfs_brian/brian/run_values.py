"""What one run of a compiled network takes besides its structure: inputs, and a perturbation's values.

A perturbation (:mod:`ttfs_brian.perturb`) never changes a compiled network: per-trial values (alpha,
thresholds, weights, the leak, time quantization, membrane noise) replace the nominal ones for the run
(``run_args`` in standalone mode), per-sample draws go into per-round tables (departure jitter, lost
spikes), and the input spike times carry the input's own perturbations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import connectivity as cn
from ..coding import input_spike_times
from ..network import TTFSNetwork
from ..neuron import NEVER_MS, integrator
from ..perturb import (Perturbation, delay_offsets, departure, find, perturb_network, release_key,
                       release_unit)
from .builder import BuiltNetwork, Plan


@dataclass
class RunValues:
    """Per-sample inputs and tables (first axis: samples) and per-run variables (one sample's worth)."""

    t_in: np.ndarray
    input_clipped: np.ndarray
    input_lost: int = 0
    variables: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (object key, variable)
    shared: dict[tuple[str, str], float] = field(default_factory=dict)  # (layer, variable) -> value in ms units
    eps: dict[str, np.ndarray] = field(default_factory=dict)
    lost: dict[str, np.ndarray] = field(default_factory=dict)
    network: TTFSNetwork | None = None  # with the run's per-trial perturbations (the readout's parameters)
    release_keys: np.ndarray | None = None  # release_failure: one key per sample

    def padded(self, total: int) -> "RunValues":
        """The per-sample arrays padded with silent samples to ``total``."""
        def pad(array, fill):
            out = np.full((total, *array.shape[1:]), fill, dtype=array.dtype)
            out[:len(array)] = array
            return out
        return RunValues(pad(self.t_in, NEVER_MS), self.input_clipped, self.input_lost, self.variables, self.shared,
                         {k: pad(v, 0.0) for k, v in self.eps.items()}, {k: pad(v, False) for k, v in self.lost.items()},
                         self.network, None if self.release_keys is None else pad(self.release_keys, 0.0))


def run_values(net: TTFSNetwork, plan: Plan, perturbations: Sequence[Perturbation], data: np.ndarray,
               indices: np.ndarray) -> RunValues:
    """Inputs and the perturbation's values for the batch ``data`` (global sample ``indices``)."""
    perturbed = perturb_network(net, perturbations)
    times, clipped = input_spike_times(perturbed, data)
    rule = departure(perturbed, perturbed.input, perturbations, indices)
    leaving = times if rule is None else rule.apply(times)
    values = RunValues(np.nan_to_num(leaving, nan=NEVER_MS).reshape(len(data), -1), clipped,
                       int(np.count_nonzero(~np.isnan(times) & np.isnan(leaving))), network=perturbed)
    kinds = {p.kind for p in perturbations}
    for layer in perturbed.layers.values():
        if layer.kind == "neuron" and kinds & {"alpha_mismatch", "threshold_mismatch", "weight_noise", "weight_bits"}:
            params = integrator(perturbed, layer)
            for key in ("alpha", "beta", "theta"):
                values.variables[(layer.name, key)] = getattr(params, key)
        if kinds & {"weight_noise", "weight_bits"}:
            for k, proj in enumerate(layer.projections):
                if proj.weight is not None:
                    values.variables[(f"{layer.name}#{k}", "w")] = cn.for_projection(perturbed, layer, proj).weight
        if layer.kind in ("neuron", "output"):
            leak = find(perturbations, "leak")
            if leak is not None:
                values.shared[(layer.name, "inv_tau_m")] = 0.0 if math.isinf(leak.level) else 1.0 / leak.level
            synaptic = find(perturbations, "synaptic_tau")
            if synaptic is not None:
                values.shared[(layer.name, "inv_tau_s")] = 0.0 if math.isinf(synaptic.level) else 1.0 / synaptic.level
            _synapse_values(values, perturbed, layer, perturbations)
        if layer.kind == "neuron":
            noise = find(perturbations, "membrane_noise")
            if noise is not None:
                values.shared[(layer.name, "sigma_v")] = noise.level
            rule = departure(perturbed, layer, perturbations, indices)
            if rule is not None and rule.grid is not None:
                values.shared[(layer.name, "q_on")] = 1.0
                values.shared[(layer.name, "q_origin")], values.shared[(layer.name, "q_unit")] = rule.grid
            if rule is not None and rule.eps is not None:
                values.eps[layer.name] = rule.eps.reshape(len(data), -1)
            if rule is not None and rule.dropped is not None:
                values.lost[layer.name] = rule.dropped.reshape(len(data), -1)
    release = find(perturbations, "release_failure")
    if release is not None:
        values.release_keys = release_key(release, indices)
    return values


def _synapse_values(values: RunValues, net: TTFSNetwork, layer, perturbations: Sequence[Perturbation]) -> None:
    """Per-synapse values of ``delay_mismatch`` (each synapse's delay and lag) and ``release_failure`` (each synapse's
    unit, the level), named by the synapses' two neurons as in the analytic engine (:mod:`ttfs_brian.perturb`)."""
    delays, release = find(perturbations, "delay_mismatch"), find(perturbations, "release_failure")
    if delays is None and release is None:
        return
    jitter = find(perturbations, "spike_jitter")
    departs = 0.0 if jitter is None else float(jitter.options.get("latency_ms", 0.0))
    for k, proj in enumerate(layer.projections):
        conn = cn.for_projection(net, layer, proj)
        key = f"{layer.name}#{k}"
        if delays is not None:
            # hidden sources' departures already add spike_jitter's latency (builder: the synapse's delay is less)
            lag = proj.delay - (departs if net.layers[proj.source].kind == "neuron" else 0.0) + delay_offsets(
                delays, net, layer, k, conn.pre, conn.post)
            values.variables[(key, "delay")] = values.variables[(key, "lag")] = lag
        if release is not None:
            values.variables[(key, "release_u")] = release_unit(release, layer, k, conn.pre, conn.post)
            values.shared[(key, "release_q")] = release.level


SHARED_UNITS = {"inv_tau_m": "1/ms", "sigma_v": "1", "q_on": "bool", "q_origin": "ms", "q_unit": "ms",
                "inv_tau_s": "1/ms", "release_q": "1"}
VARIABLE_UNITS = {"delay": "ms", "lag": "ms"}


def assignments(built: BuiltNetwork, values: RunValues) -> list[tuple[Any, str, Any]]:
    """``(Brian2 object, variable, value with units)`` that set a run's per-trial values (all replicas)."""
    import brian2 as b2

    replicas = built.layout.replicas
    out: list[tuple[Any, str, Any]] = []
    for (key, name), array in values.variables.items():
        if "#" in key:
            layer, k = key.split("#")
            obj = built.synapses.get((layer, int(k)))
            if obj is None:  # a projection without synapses
                continue
            if name == "lag":  # in the target's round frame, as the builder's (pipelined rounds start apart)
                source = values.network.layers[layer].projections[int(k)].source
                array = array + built.timing.shift_ms(source, layer)
        else:
            obj = built.groups[key]
        array = np.tile(array, replicas)
        out.append((obj, name, array * b2.ms if VARIABLE_UNITS.get(name) == "ms" else array))
    for (key, name), value in values.shared.items():
        unit = SHARED_UNITS[name]
        if name == "q_origin":  # a window's start, in the group's round frame
            value = value - built.timing.offset_ms(key)
        quantity = bool(value) if unit == "bool" else value / b2.ms if unit == "1/ms" else (
            value * b2.ms if unit == "ms" else value)
        if "#" in key:
            layer, k = key.split("#")
            obj = built.synapses.get((layer, int(k)))
            if obj is None:
                continue
        else:
            obj = built.groups[key]
        out.append((obj, name, quantity))
    return out


def tables(built: BuiltNetwork, values: RunValues, chunk: slice) -> dict[str, tuple[Any, Any]]:
    """Per hidden layer, this chunk's departure jitter (with units) and lost flags, samples first."""
    import brian2 as b2

    out = {}
    for layer in set(values.eps) | set(values.lost):
        size = built.groups[layer].N // built.layout.replicas
        n = chunk.stop - chunk.start
        eps = values.eps.get(layer, np.zeros((len(values.t_in), size)))[chunk].reshape(n, -1)
        lost = values.lost.get(layer, np.zeros((len(values.t_in), size), dtype=bool))[chunk].reshape(n, -1)
        out[layer] = (eps * b2.ms, lost.astype(np.float64))
    return out
