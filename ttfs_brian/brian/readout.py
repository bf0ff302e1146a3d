"""Monitors -> :class:`~ttfs_brian.result.SimulationResult`: spike times, logits, the clipped/early report.

Monitors record events with the absolute time ``t``, which names the round, and a neuron index that
names the replica; :class:`Collector` turns them into flat, sample-major arrays chunk by chunk, and
:meth:`Collector.result` assembles the result of the first ``N`` samples.
"""
from __future__ import annotations

import numpy as np

from ..coding import observed
from ..grid_bound import grid_error_bound, uncertain_predictions
from ..network import TTFSNetwork
from ..neuron import integrator, not_rising
from ..result import SimulationResult, build_report, layer_record, named_results, no_flags, note_layer_flags
from . import equations as eq
from .builder import BuiltNetwork, Plan


class Collector:
    """Accumulates the monitored values of every chunk of a batch of ``chunks * R * K`` samples."""

    def __init__(self, plan: Plan, samples_per_run: int, chunks: int, net: TTFSNetwork | None = None):
        self.plan = plan
        self.net = net = plan.net if net is None else net  # with the latency of a spike jitter, if any
        total = chunks * samples_per_run
        # Flat arrays (sample-major) of what every sample needs: spike times and the output's v. The
        # neurons that crossed before t_min are few: kept as event lists (flat index, values).
        self.raw = {layer.name: np.full(total * layer.size, np.nan) for layer in net.layers.values()}
        self.crossed: dict[str, list[np.ndarray]] = {name: [] for name in net.layers}
        self.reports: dict[str, list[tuple[np.ndarray, ...]]] = {name: [] for name in net.layers}
        self.lost: dict[str, list[np.ndarray]] = {name: [] for name in net.layers}
        self.meta: dict[str, dict] = {}

    def read(self, built: BuiltNetwork, offset: int, first: bool) -> None:
        """Take the monitors of the run that simulated samples ``offset ...`` (valid until the next run)."""
        net = self.net
        departures = built.structure.departures
        for layer in net.layers.values():
            name, size = layer.name, layer.size
            if layer.is_output:
                sample, neuron, (v,) = _events(built, layer.name, size, "readout", "v")
                self.raw[name][(offset + sample) * size + neuron] = v
                continue
            names = eq.spike_monitor_variables(layer.kind, net.variant, departures)
            sample, neuron, values = _events(built, layer.name, size, "spikes", *names)
            recorded = dict(zip(names, values))
            flat = (offset + sample) * size + neuron
            frame = built.timing.offset_ms(name)  # the group's round starts this much after its sample's
            if "lost" in recorded:
                self.lost[name].append(flat[recorded["lost"].astype(bool)])
            self.raw[name][flat] = recorded["t_spike"] * 1e3 + frame  # Brian2 stores seconds
            if "t_raw" in recorded:
                self.crossed[name].append(flat[recorded["t_raw"] * 1e3 + frame < layer.t_min - eq.TIME_EPS_MS])
            if first:
                in_sample_0 = sample == 0
                self.meta.setdefault("spike_monitor", {})[name] = (neuron[in_sample_0],
                                                                    recorded["t_spike"][in_sample_0] * 1e3 + frame)
            if (name, "report") in built.monitors:  # exact: the neurons that crossed before t_min (= t_late)
                sample, neuron, (v, current) = _events(built, layer.name, size, "report", "v", "I")
                reported = (offset + sample) * size + neuron
                self.crossed[name].append(reported)
                self.reports[name].append((reported, v.copy(), current.copy()))
        if first:
            period = built.timing.period_ms
            for (name, kind), monitor in built.monitors.items():
                if kind == "trace":
                    t, v = (np.asarray(monitor.variables[key].get_value()) for key in ("t", "v"))
                    start = built.timing.offset_ms(name)  # sample 0 is every group's round 0
                    in_round_0 = (t * 1e3 > start - 0.5 * built.timing.dt) & (t * 1e3 < start + period - 0.5 * built.timing.dt)
                    self.meta.setdefault("traces", {})[name] = (t[in_round_0] * 1e3, np.asarray(v)[in_round_0].T.copy())

    def result(self, n: int, input_clipped: np.ndarray, spike_timing: str, dt: float, period_ms: float,
               input_lost: int = 0, leak: bool = False, perturbed: TTFSNetwork | None = None) -> SimulationResult:
        """Spike times, logits and the report of the first ``n`` samples (``leak``: an ``exact`` neuron that
        crosses before ``t_min`` counts as early, as in the analytic engine: a leaky neuron has no line;
        ``perturbed``: the network with the run's per-trial perturbations, whose parameters classify the
        neurons that crossed before ``t_min`` and count those that cannot rise)."""
        net = self.net
        perturbed = net if perturbed is None else perturbed
        times: dict[str, np.ndarray] = {}
        records, reasons = [], no_flags(n)
        logits = None
        bound = None
        if spike_timing == "grid":
            bound = grid_error_bound(net, dt, self.plan.connections())
        for layer in net.layers.values():
            values = self.raw[layer.name][:n * layer.size]
            if layer.is_output:
                v = values.reshape(n, -1)
                if np.isnan(v).any():
                    raise RuntimeError("the output layer was not read out in every round (internal error)")
                logits = v + np.asarray(layer.arrays["bias"]).reshape(1, -1) if net.variant == "sparse" else v
                continue
            clipped, early = self._flags(perturbed, perturbed.layers[layer.name], values.size, n, input_clipped,
                                         period_ms)
            if leak and net.variant == "exact":
                early |= clipped
                clipped[:] = False
            times[layer.name] = observed(net, layer, values.reshape(n, *layer.shape))
            clipped_n, early_n = (mask.reshape(n, -1).sum(axis=1) for mask in (clipped, early))
            worst = 0.0 if bound is None else float(bound.spike_ms[layer.name].max())
            lost = input_lost if layer.kind == "input" else sum(
                int(np.count_nonzero(flat < n * layer.size)) for flat in self.lost[layer.name])
            rising = int(not_rising(perturbed, perturbed.layers[layer.name]).sum())
            records.append(layer_record(layer.name, layer.kind, times[layer.name], clipped_n, early_n, worst, lost,
                                        rising))
            note_layer_flags(reasons, layer.kind, clipped_n, early_n, rising)
        assert logits is not None
        if bound is not None:
            reasons["uncertain_prediction"] = uncertain_predictions(logits, bound.logits)
        return SimulationResult(logits, named_results(net, times), build_report(records), reasons, backend="brian2",
                                meta=dict(self.meta), error_bound=bound)

    def _flags(self, net: TTFSNetwork, layer, count: int, n: int, input_clipped: np.ndarray, period_ms: float):
        """Per-neuron clipped and early masks of one layer (first ``n`` samples)."""
        clipped = np.zeros(count, dtype=bool)
        early = np.zeros(count, dtype=bool)
        if layer.kind == "input":
            return input_clipped.reshape(-1), early
        if layer.kind != "neuron":
            return clipped, early
        before = np.concatenate([np.zeros(0, dtype=np.int64), *self.crossed[layer.name]])
        before = before[before < count]
        if net.variant != "exact":
            clipped[before] = True
            return clipped, early
        # Clipped: v(t_min) lies above theta while the potential still rises (the line from t_min meets theta
        # before it, events._above_at_t_min); early: the neuron crossed before t_min all the same. Only neurons
        # that crossed before t_min can be either; they alone report v and I at t_min (eq.REPORT_EVENT).
        early[before] = True
        params = integrator(net, layer)
        for flat, v, current in self.reports[layer.name]:  # v and I at t_min
            keep = flat < count
            flat, v, current = flat[keep], v[keep], current[keep]
            neuron = flat % layer.size
            rate = params.alpha[neuron] + params.beta[neuron] + current  # from t_min on (padding included)
            closed = layer.t_min - net.tau_c * (v - params.theta[neuron]) / np.where(rate > 0, rate, np.nan)
            clipped[flat] = np.nan_to_num(closed, nan=np.inf) < layer.t_min - eq.TIME_EPS_MS
        clipped &= early
        early &= ~clipped
        return clipped, early


def _events(built: BuiltNetwork, layer: str, size: int, kind: str, *names: str):
    """(sample within the run, neuron within the sample, recorded values in s or units of v) of one monitor,
    read through the variable's own device (standalone result files or runtime arrays)."""
    monitor = built.monitors[(layer, kind)]
    index, t, *values = (np.asarray(monitor.variables[name].get_value()) for name in ("i", "t", *names))
    period = built.timing.period_ms
    since = t * 1e3 - built.timing.offset_ms(layer)  # >= 0 from the group's first round on
    rounds = np.floor(since / period + 0.5 * built.timing.dt / period).astype(np.int64)
    replica = index // size
    neuron = index - replica * size
    if rounds.size and replica.max() >= built.layout.replicas:
        raise RuntimeError(f"internal error: layer {layer!r} recorded an event in replica {replica.max()} of a run "
                           f"with {built.layout.replicas} replicas")
    # a pipelined layer waits for its first round (its readout still ends the round before it), and may begin a
    # round after the batch's last (silent inputs: an exact neuron still fires when forced): no sample's events
    keep = (rounds >= 0) & (rounds < built.layout.rounds)
    return (rounds * built.layout.replicas + replica)[keep], neuron[keep].astype(np.int64), [v[keep] for v in values]
