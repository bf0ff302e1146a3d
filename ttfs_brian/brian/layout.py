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
    """One round: ``steps`` steps of ``dt`` ms, long enough for the readout at ``readout_ms``."""

    dt: float
    steps: int

    @property
    def period_ms(self) -> float:
        return self.steps * self.dt


def round_timing(readout_ms: float, dt: float, latency_steps: int) -> RoundTiming:
    """Simulated time per sample: up to the readout (the output's ``t_min``), ``latency_steps`` more (grid
    timing: up to one step of latency per layer, so that every late spike is recorded) and the readout step."""
    duration = readout_ms + (latency_steps + 1) * dt
    return RoundTiming(dt, int(math.ceil(duration / dt - 1e-9)))


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
