"""What a compiled network can do beyond the nominal mapping (changing it means compiling again)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError
from ..perturb import Perturbation, find, total_latency


@dataclass(frozen=True)
class Structure:
    """What a compiled network can do beyond the nominal mapping; a run that needs more rebuilds it.

    ``leak``: the leaky neuron (``inv_tau_m``; 0 is the nominal one), ``noise``: membrane noise
    (``sigma_v``), ``departures``: spikes that leave their neuron off their crossing (jitter, time
    quantization, drops; per-round tables), ``latency``: the transmission latency (ms) already in the network's
    delays (``spike_jitter`` and ``delay_mismatch``), of which hidden neurons' departures add
    ``departure_latency`` (``spike_jitter``'s); ``synaptic``: exponential synaptic currents (``inv_tau_s``; 0 is
    the step), ``synapse_delays``: a delay and lag per synapse, ``release``: synapses that can fail
    (``release_u`` per synapse, a key per sample).
    """

    leak: bool = False
    noise: bool = False
    departures: bool = False
    latency: float = 0.0
    departure_latency: float = 0.0
    synaptic: bool = False
    synapse_delays: bool = False
    release: bool = False

    FLAGS = ("leak", "noise", "departures", "synaptic", "synapse_delays", "release")

    def union(self, other: "Structure") -> "Structure":
        """Everything either needs; the latencies are ``other``'s (a network is timed for one latency)."""
        return Structure(**{f: getattr(self, f) or getattr(other, f) for f in self.FLAGS}, latency=other.latency,
                         departure_latency=other.departure_latency)

    def covers(self, other: "Structure") -> bool:
        return (all(getattr(self, f) or not getattr(other, f) for f in self.FLAGS) and self.latency == other.latency
                and self.departure_latency == other.departure_latency)


def structure_for(perturbations: Sequence[Perturbation]) -> Structure:
    """The compiled structure these perturbations need."""
    jitter = find(perturbations, "spike_jitter")
    hidden_departures = any(find(perturbations, kind) for kind in ("spike_jitter", "time_bits", "drop"))
    if find(perturbations, "conductance") is not None:
        raise InputError("perturbation conductance has no Brian2 twin: with I = g (E - v) the arrivals within one step "
                         "do not commute, and Brian2 delivers them in synapse order, not in time; simulate it with "
                         "the analytic engine")
    synaptic = find(perturbations, "synaptic_tau")
    if synaptic is not None and find(perturbations, "leak") is not None:
        raise InputError("synaptic_tau combines with neither leak nor conductance; run them one at a time")
    return Structure(leak=find(perturbations, "leak") is not None, noise=find(perturbations, "membrane_noise") is not None,
                     departures=hidden_departures, latency=total_latency(perturbations),
                     departure_latency=0.0 if jitter is None else float(jitter.options.get("latency_ms", 0.0)),
                     synaptic=synaptic is not None, synapse_delays=find(perturbations, "delay_mismatch") is not None,
                     release=find(perturbations, "release_failure") is not None)
