"""What a compiled network can do beyond the nominal mapping (changing it means compiling again)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..perturb import Perturbation, find


@dataclass(frozen=True)
class Structure:
    """What a compiled network can do beyond the nominal mapping; a run that needs more rebuilds it.

    ``leak``: the leaky neuron (``inv_tau_m``; 0 is the nominal one), ``noise``: membrane noise
    (``sigma_v``), ``departures``: spikes that leave their neuron off their crossing (jitter, time
    quantization, drops; per-round tables), ``latency``: the transmission latency (ms) of ``spike_jitter``
    already in the network's delays (hidden neurons' departures add it).
    """

    leak: bool = False
    noise: bool = False
    departures: bool = False
    latency: float = 0.0

    def union(self, other: "Structure") -> "Structure":
        """Everything either needs; the latency is ``other``'s (a network is timed for one latency)."""
        return Structure(self.leak or other.leak, self.noise or other.noise, self.departures or other.departures,
                         other.latency)

    def covers(self, other: "Structure") -> bool:
        return ((self.leak or not other.leak) and (self.noise or not other.noise)
                and (self.departures or not other.departures) and self.latency == other.latency)


def structure_for(perturbations: Sequence[Perturbation]) -> Structure:
    """The compiled structure these perturbations need."""
    jitter = find(perturbations, "spike_jitter")
    hidden_departures = any(find(perturbations, kind) for kind in ("spike_jitter", "time_bits", "drop"))
    return Structure(leak=find(perturbations, "leak") is not None, noise=find(perturbations, "membrane_noise") is not None,
                     departures=hidden_departures,
                     latency=0.0 if jitter is None else float(jitter.options.get("latency_ms", 0.0)))
