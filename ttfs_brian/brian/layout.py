"""How a batch maps onto one compiled Brian2 network: replicas side by side, rounds one after the other.

Pure functions of sizes and limits (no Brian2). ``R`` samples run side by side: every group has ``R``
copies of its neurons and every synapse list ``R`` index-shifted copies. Standalone devices also
*time-multiplex*: one run of the binary simulates ``K`` rounds, round ``k`` in ``[k P, (k + 1) P)``
holding samples ``k R .. k R + R - 1`` (``P`` = :attr:`RoundTiming.period_ms`). A batch of ``N``
samples takes ``ceil(N / (R K))`` runs, the last one padded with silent inputs.

Why few replicas and many rounds in standalone: what a run of the binary pays per replica (creating
and sorting the synapses and their spike queues, writing every array to disk at the end) grows with
``R``, while the cost per step and object, which replicas amortise, is small in C++. Measured on
LeNet-5 (``exact``, precise, 1000 test images, 2 OpenMP threads on 2 cores, compilation included;
``experiments/bench_brian2.py``), dt = 1 ms: R x K = 1 x 1000: 17.4 ms/image, 4 x 250 (the default):
18.0, 32 x 32: 22.6. In runtime mode (Python per step and object) replicas pay off instead:
784-100-10 ``exact`` network, dt = 0.01 ms, seconds per sample 0.27 (R = 1), 0.041 (R = 8), 0.011
(R = 64); runtime therefore runs the whole batch side by side, one round per run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_MAX_SYNAPSES = 20_000_000
"""Upper bound on synapses in one compiled network (all replicas), which bounds ``R``."""
DEFAULT_STANDALONE_REPLICAS = 4
"""Default ``R`` for standalone devices (more samples of a batch run as rounds, one after the other)."""
DEFAULT_MAX_SPIKES_PER_RUN = 20_000_000
"""Upper bound on the spikes one standalone run records (K R neurons; ~28 bytes each), which bounds ``K``."""
MAX_STEPS_PER_RUN = 10**9
"""``round_step`` is a 32-bit Brian2 integer, and the round clock stays ahead only for t < 1e9 dt."""


@dataclass(frozen=True)
class RoundTiming:
    """Rounds of ``steps`` steps of ``dt`` ms; layer ``L``'s round ``k`` starts at step ``k steps + offsets[L]``.

    *Aligned* (every offset 0): a round is a sample's whole latency, up to the readout, and every layer works
    through all of it. *Pipelined*: TTFS is a wave, each layer busy only from its integration start ``t_on`` to its
    ``t_max``; a layer's rounds start at its ``t_on`` and last the longest such span (plus what a spike needs to
    reach its targets), so that layer ``n`` works on sample ``k`` while layer ``n + 1`` still works on sample
    ``k - 1``, and a batch of ``K`` rounds lasts ``K`` short periods plus the latency once. A spike carries the
    round it belongs to (``spike_round``): delivered early, before its target's round began, it waits in
    ``I_next``; late, after it ended, it is ignored (:mod:`ttfs_brian.brian.equations`)."""

    dt: float
    steps: int
    offsets: tuple[tuple[str, int], ...] = ()

    @property
    def period_ms(self) -> float:
        return self.steps * self.dt

    def offset_steps(self, layer: str) -> int:
        return dict(self.offsets).get(layer, 0)

    def offset_ms(self, layer: str) -> float:
        return self.offset_steps(layer) * self.dt

    def shift_ms(self, source: str, target: str) -> float:
        """What a time in ``source``'s round frame needs added to be in ``target``'s (0 aligned)."""
        return self.offset_ms(source) - self.offset_ms(target)

    def run_steps(self, rounds: int) -> int:
        """Steps until every layer has finished round ``rounds - 1``."""
        return (rounds - 1) * self.steps + max([0, *(o for _, o in self.offsets)]) + self.steps

    @property
    def pipelined(self) -> bool:
        return any(o for _, o in self.offsets)


def round_timing(net, dt: float, latency_steps: int, pipelined: bool = False, departures: bool = False) -> RoundTiming:
    """The rounds of ``net`` (windows in ms; see :class:`RoundTiming`). Aligned: up to the readout (the output's
    ``t_min``), ``latency_steps`` more (grid timing: up to one step of latency per layer, so that every late spike is
    recorded) and the readout step. Pipelined: an integrating layer starts at its integration start ``t_on``, a max
    pool at its window's start (an input spiking earlier, early firing, waits for it), the input at 0; a round holds
    the layer's work up to its own end (``t_max``, the readout) and the :func:`~ttfs_brian.coding.horizon` of its
    spikes, and the span of its spikes plus their delay (a source's spike time is read when the spike arrives, so
    it must not spike again before), with the same margin; with ``departures`` (spikes that leave late, jittered or
    quantized) a neuron's round also holds its last departure that can still act."""
    from ..coding import horizon

    def steps(ms: float) -> int:
        return int(math.ceil(ms / dt - 1e-9))

    margin = latency_steps + 1
    readout = net.output_layer.t_min
    if not pipelined:
        return RoundTiming(dt, steps(readout) + margin)
    start: dict[str, int] = {}
    need = 1
    for layer in net.layers.values():
        if layer.kind == "input":
            start[layer.name], first = 0, 0.0
        elif layer.kind == "maxpool":
            start[layer.name] = int(math.floor(layer.t_min / dt + 1e-9))
            first = start[layer.name] * dt  # an input that came early fires it at the round's start
        else:
            t_on = min(net.layers[p.source].t_min + p.delay for p in layer.projections)
            start[layer.name] = int(math.floor(t_on / dt + 1e-9))
            first = t_on if net.variant == "exact" else layer.t_min
        # the layer's own last event: a neuron's t_max (or, when spikes leave late, jittered or quantized, the last
        # departure that still acts downstream), the readout, and for what relays (the input, a pool) the last spike
        # that still acts downstream
        if layer.kind == "output":
            last = readout
        elif layer.kind == "neuron" and not departures:
            last = layer.t_max
        else:
            last = max(layer.t_max, horizon(net, layer))
        need = max(need, steps(last) - start[layer.name] + margin)
        for target in net.layers.values():  # a spike is read when it arrives: the layer must not spike again first
            for proj in target.projections:
                if proj.source == layer.name:
                    need = max(need, steps(last + proj.delay) - int(math.floor(first / dt + 1e-9)) + margin)
    return RoundTiming(dt, need, tuple(start.items()))


@dataclass(frozen=True)
class Layout:
    """``replicas`` samples side by side, ``rounds`` one after the other, in one run."""

    replicas: int
    rounds: int

    @property
    def samples_per_run(self) -> int:
        return self.replicas * self.rounds

    def runs(self, samples: int) -> int:
        return math.ceil(samples / self.samples_per_run)


def plan(samples: int, *, multiplexed: bool, synapses_per_sample: int, neurons_per_sample: int, steps_per_round: int,
         replicas: int | None = None, rounds: int | None = None, max_synapses: int = DEFAULT_MAX_SYNAPSES,
         max_spikes_per_run: int = DEFAULT_MAX_SPIKES_PER_RUN) -> Layout:
    """Replicas ``R`` and rounds ``K`` for a first batch of ``samples`` (see the module docstring).

    Defaults: standalone ``R = min(N, 4)``, ``K = ceil(N / R)`` bounded by ``max_spikes_per_run``
    (monitor memory) and by 1e9 steps per run; runtime ``R = N``, ``K = 1``. ``R`` never exceeds
    ``max_synapses / synapses_per_sample``.
    """
    cap = max(1, max_synapses // max(1, synapses_per_sample))
    if replicas is None:
        replicas = min(samples, DEFAULT_STANDALONE_REPLICAS) if multiplexed else samples
    replicas = max(1, min(replicas, cap))
    if not multiplexed:
        return Layout(replicas, 1)
    step_limit = MAX_STEPS_PER_RUN // steps_per_round
    if rounds is not None:
        if rounds > step_limit:
            raise ValueError(f"rounds={rounds} x {steps_per_round} steps exceeds 1e9 steps in one run; use at most "
                             f"{step_limit} rounds (or a larger dt)")
        return Layout(replicas, rounds)
    most = max(1, max_spikes_per_run // max(1, replicas * neurons_per_sample))
    return Layout(replicas, max(1, min(math.ceil(samples / replicas), most, step_limit)))
