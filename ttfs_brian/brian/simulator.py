"""Run a :class:`~ttfs_brian.network.TTFSNetwork` in Brian2: the facade over the backend's modules.

:mod:`~ttfs_brian.brian.devices` (one adapter per device), :mod:`~ttfs_brian.brian.layout` (replicas
x rounds), :mod:`~ttfs_brian.brian.builder` (the Brian2 objects), :mod:`~ttfs_brian.brian.readout`
(monitors -> result), :mod:`~ttfs_brian.brian.toolchain` (compiler workarounds),
:mod:`~ttfs_brian.brian.equations` (every equation string).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from tqdm import tqdm

from .. import perturb
from ..cost import synaptic_events
from ..errors import InputError
from ..network import TTFSNetwork
from ..result import SimulationResult
from ..validation import finite, sample_indices, validate_inputs
from . import builder, devices, layout, run_values
from . import equations as eq
from ..perturb import Perturbation
from .builder import BuiltNetwork
from .structure import structure_for

log = logging.getLogger(__name__)


class Simulator:
    """Brian2 simulation of a converted network, built once and run on many batches.

    Parameters
    ----------
    net:
        The converted network.
    device:
        ``"runtime"`` (Brian2's runtime code generation), ``"cpp_standalone"`` (one compiled binary,
        rerun with new inputs) or ``"cuda_standalone"`` (brian2cuda; needs its own Python >= 3.12
        environment).
    timing:
        ``"precise"``: exact off-grid spike times (SPEC section 6); ``"grid"``: plain Brian2, spikes on
        the ``dt`` grid with one step of latency per layer, and a propagated error bound
        (:mod:`ttfs_brian.grid_bound`).
    dt:
        Integration step in ms; ``None`` takes the network's ``dt`` (or 0.01 ms). Precise timing is exact
        (to rounding) when the windows are multiples of ``dt``; projection delays must be.
    threads:
        OpenMP threads for ``cpp_standalone``.
    build_dir:
        Project directory for standalone devices. ``None``: a fresh temporary directory, deleted with the
        simulator (a VGG-small project holds hundreds of MB); a directory you name is kept.
    batch_size:
        Samples simulated side by side (replicas ``R``); default: :func:`ttfs_brian.brian.layout.plan`.
    codegen_target:
        Runtime device only: Brian2's code generation target (``"cython"``, ``"numpy"``); ``None`` keeps
        ``prefs.codegen.target``. ``"numpy"`` needs no compilation, which suits small networks and tests.
    compute_capability:
        ``cuda_standalone`` only: the GPU architecture to compile for (e.g. ``9.0``), needed where no GPU
        can be detected.
    rounds:
        Standalone only: samples per replica simulated one after the other in one run (``K``).
    record_v:
        ``{layer name: neuron indices}`` of hidden or output layers whose ``v`` is recorded for sample 0,
        returned as ``result.meta["traces"][layer] = (t_ms, v)`` (``v``: neurons x steps, ``t`` from the
        round start). Every result also has ``meta["spike_monitor"][layer] = (neuron index, spike time
        ms)`` of sample 0, straight from the ``SpikeMonitor``.
    setup:
        ``setup(built)`` returns Brian2 objects (monitors, ...) to add to the network before it is built;
        ``built`` is the :class:`~ttfs_brian.brian.builder.BuiltNetwork` (``built.groups[layer]``,
        ``built.synapses[(layer, k)]``, neurons of replica ``r`` at ``r * layer.size ...``). They are in
        :attr:`extra` afterwards and hold the values of the last run.
    perturbations:
        Perturbations (:mod:`ttfs_brian.perturb`) the compiled network must support, so that runs with
        them, at any level and seed, reuse one binary; a run needing more rebuilds (and logs it). By default
        the first run's perturbations decide.
    pipeline:
        Standalone devices: each layer's rounds start at its integration start and last its busy span, so the
        samples of a run flow through the layers like a wave (:class:`~ttfs_brian.brian.layout.RoundTiming`);
        ``False`` keeps the aligned rounds, every layer working through each sample's whole latency. Default:
        pipelined where rounds follow one another (standalone devices).
    """

    def __init__(self, net: TTFSNetwork, device: str = "runtime", timing: str = "precise", dt: float | None = 0.01,
                 threads: int | None = None, build_dir: str | os.PathLike | None = None,
                 batch_size: int | None = None, max_synapses: int = layout.DEFAULT_MAX_SYNAPSES,
                 codegen_target: str | None = None, compute_capability: float | None = None,
                 rounds: int | None = None, max_spikes_per_run: int = layout.DEFAULT_MAX_SPIKES_PER_RUN,
                 record_v: dict[str, Any] | None = None,
                 setup: Callable[[BuiltNetwork], Iterable[Any]] | None = None,
                 perturbations: Iterable[Perturbation] | None = None, pipeline: bool | None = None) -> None:
        if timing not in eq.TIMINGS:
            raise InputError(f"unknown timing {timing!r}; choose one of {eq.TIMINGS}")
        dt = net.dt if dt is None else dt
        self.dt = 0.01 if dt is None else finite(dt, "dt (ms)", low=0.0, low_open=True)
        if threads is not None and int(threads) < 1:
            raise InputError(f"threads (OpenMP) must be >= 1, got {threads}")
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.adapter = devices.adapter(device, codegen_target=codegen_target, threads=threads,
                                       build_dir=None if build_dir is None else Path(build_dir),
                                       compute_capability=compute_capability)
        if rounds is not None and (int(rounds) < 1 or (not self.adapter.multiplexed and int(rounds) != 1)):
            raise InputError(f"rounds must be >= 1 (and 1 for device='runtime'), got {rounds}")
        self.net = net
        self.device = device
        self.timing = timing
        self.batch_size = batch_size
        self.max_synapses = int(max_synapses)
        self.max_spikes_per_run = int(max_spikes_per_run)
        self.requested_rounds = None if rounds is None else int(rounds)
        self.record_v = {key: [int(i) for i in np.atleast_1d(value)] for key, value in (record_v or {}).items()}
        self.setup = setup
        if pipeline and not self.adapter.multiplexed:
            raise InputError("pipeline=True needs a standalone device: the runtime device simulates one round")
        self.pipelined = self.adapter.multiplexed if pipeline is None else bool(pipeline)
        self.structure = structure_for(perturb.as_list(perturbations))
        self.plan = builder.plan(net)
        self.round_timing = self._round_timing()
        self.compilations = 0
        """Number of times Brian2 code was generated and compiled (standalone: must stay 1)."""
        self.built: BuiltNetwork | None = None
        self._build_s = self._compile_s = 0.0
        self._runs = 0
        self._check_grid()

    # ------------------------------------------------------------------ structure
    @property
    def synapses_per_sample(self) -> int:
        return self.plan.synapses_per_sample

    @property
    def neurons_per_sample(self) -> int:
        return self.plan.neurons_per_sample

    @property
    def build_dir(self) -> Path | None:
        return getattr(self.adapter, "build_dir", None)

    @property
    def network(self):
        """The ``brian2.Network`` (after :meth:`build` or the first :meth:`run`)."""
        return None if self.built is None else self.built.network

    @property
    def extra(self) -> tuple:
        """The objects that ``setup`` added."""
        return () if self.built is None else self.built.extra

    @property
    def replicas(self) -> int | None:
        return None if self.built is None else self.built.layout.replicas

    @property
    def rounds(self) -> int | None:
        return self.requested_rounds if self.built is None else self.built.layout.rounds

    @property
    def samples_per_run(self) -> int | None:
        """Samples one run of the network holds: replicas times rounds (``None`` before building)."""
        return None if self.built is None else self.built.layout.samples_per_run

    def period_ms(self) -> float:
        """Length ``P`` of one round (a multiple of ``dt``)."""
        return self.round_timing.period_ms

    def steps_per_round(self) -> int:
        return self.round_timing.steps

    @property
    def build_s(self) -> float:
        """Seconds spent constructing the Brian2 objects of the network (before code generation)."""
        return self._build_s

    @property
    def compile_s(self) -> float:
        """Seconds spent generating and compiling standalone code (0 for runtime)."""
        return self._compile_s

    @property
    def compiled(self) -> bool:
        return self.built is not None

    def _check_grid(self) -> None:
        """Delays must be multiples of dt (the spike queue delivers whole steps); note window edges off the grid.

        The gates integrate the exact fraction of a step inside a window, so ``v`` stays exact at every step
        end wherever the edges lie; only a crossing less than one step after an edge at which the slope
        changes is back-extrapolated with the slope after the edge.
        """
        delays = np.array([p.delay for layer in self.net.layers.values() for p in layer.projections])
        if np.any(np.abs(delays / self.dt - np.round(delays / self.dt)) > 1e-6):
            raise InputError(f"projection delays of this network are not multiples of dt = {self.dt:g} ms; convert "
                             f"with dt={self.dt:g} (which aligns windows and delays to the step) or pick such a dt")
        edges = np.array([t for layer in self.net.layers.values() for t in (layer.t_min, layer.t_max)])
        off = np.abs(edges / self.dt - np.round(edges / self.dt)) > 1e-6
        if off.any() and self.timing == "precise":
            log.info("%d window edges are not multiples of dt = %g ms; a neuron crossing its threshold less than "
                     "one step after an edge where its slope changes may be off by up to dt (convert with dt=%g to "
                     "align the windows)", int(off.sum()), self.dt, self.dt)

    # ------------------------------------------------------------------ building
    def _layout(self, n: int) -> layout.Layout:
        try:
            return layout.plan(n, multiplexed=self.adapter.multiplexed, synapses_per_sample=self.synapses_per_sample,
                               neurons_per_sample=self.neurons_per_sample, steps_per_round=self.steps_per_round(),
                               replicas=self.batch_size, rounds=self.requested_rounds,
                               max_synapses=self.max_synapses, max_spikes_per_run=self.max_spikes_per_run)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def build(self, batch_size: int = 1) -> None:
        """Generate and compile the network for batches of ``batch_size`` samples (as :meth:`run` would choose),
        without running it: to build ahead, or to build ``cuda_standalone`` code without a GPU."""
        if not self.compiled:
            self._build(self._layout(max(1, int(batch_size))))

    def _build(self, plan: layout.Layout) -> None:
        started = time.perf_counter()
        structure = self.structure
        timed = self.plan if not structure.latency else builder.plan(perturb.with_latency(self.net, structure.latency))
        log.info("building the Brian2 network (%s, %s timing, dt %g ms): %d replicas x %d rounds, %d synapses",
                 self.device, self.timing, self.dt, plan.replicas, plan.rounds, plan.replicas * self.synapses_per_sample)
        if self.adapter.multiplexed:
            log.info("generating and compiling the %s project (tens of seconds, once per simulator)", self.device)
        with self.adapter.activate():
            built = builder.build(timed, plan, self.round_timing, self.timing, self.adapter.clock(self.dt),
                                  self.adapter.multiplexed, self.record_v, self.setup, structure)
            # Half a step short of K P: the round clock (shorter than P) must not tick a K+1-th time. When a
            # whole run lasts less than 10 ms, that extra tick lies within Brian2's absolute clock epsilon
            # (1e-14 s) of K P and dragged the simulation clock into an extra step, in which the inputs of
            # the first step fired again for a round that does not exist.
            built_s = time.perf_counter() - started
            self._compile_s = self.adapter.build(built.network, self.round_timing.run_steps(plan.rounds) * self.dt
                                                 - 0.5 * self.dt)
        self._build_s = built_s
        self.compilations += 1
        self.built = built
        log.info("built %s network: build %.2f s, compile %.2f s", self.device, self._build_s, self._compile_s)

    # ------------------------------------------------------------------ running
    def run(self, x: np.ndarray, perturbation=None, indices: np.ndarray | None = None) -> SimulationResult:
        """Simulate a batch ``x`` of shape ``(N, *input_shape)`` (raw inputs, as for the ReLU network).

        ``perturbation``: a :class:`~ttfs_brian.perturb.Perturbation` or a list; ``indices``: the samples'
        global indices, on which per-sample draws depend (default ``0 .. N-1``).
        """
        from .readout import Collector

        data = validate_inputs(self.net, x)
        n = data.shape[0]
        perturbations = perturb.as_list(perturbation)
        indices = sample_indices(indices, n)
        needed = structure_for(perturbations)
        if self.built is not None and not self.built.structure.covers(needed):
            log.warning("this simulator was built for %s; rebuilding for %s (pass perturbations= when creating the "
                        "Simulator to compile once)", self.built.structure, needed)
            self.built = None
            self.adapter.discard()
        if self.built is None:
            self.structure = self.structure.union(needed)
            self.round_timing = self._round_timing()
            self._build(self._layout(n))
        built = self.built
        timed_net = perturb.with_latency(self.net, self.structure.latency) if self.structure.latency else self.net
        values = run_values.run_values(self.net, self.plan, perturbations, data, indices)  # latency applied once
        per_run = built.layout.samples_per_run
        chunks = built.layout.runs(n)
        padded = values.padded(chunks * per_run)
        assignments = run_values.assignments(built, values)
        collector = Collector(self.plan, per_run, chunks, timed_net)
        started = time.perf_counter()
        progress = tqdm(total=chunks, unit="run", desc=f"Brian2 {self.device}", disable=None, leave=False)
        if not self.adapter.multiplexed and self._runs == 0:
            # Brian2 compiles the code objects of the runtime target in the first run (cached for later)
            progress.set_description("Brian2 runtime: compiling code objects (first run only)")
            log.info("first runtime run: Brian2 generates and compiles its code objects (%s target); this can take "
                     "minutes and is cached for later runs", self.adapter.codegen_target or "default")
        for chunk in range(chunks):
            part = slice(chunk * per_run, (chunk + 1) * per_run)
            self.adapter.run(built, padded.t_in[part], self.period_ms(), assignments,
                             run_values.tables(built, padded, part),
                             None if padded.release_keys is None else padded.release_keys[part])
            self._runs += 1
            collector.read(built, chunk * per_run, first=chunk == 0)
            progress.set_description(f"Brian2 {self.device}")
            progress.update()
        progress.close()
        run_s = time.perf_counter() - started
        result = collector.result(n, values.input_clipped, self.timing, self.dt, self.period_ms(), values.input_lost,
                                  leak=any(p.kind in ("leak", "synaptic_tau") for p in perturbations),
                                  perturbed=values.network)
        result.meta.update(
            device=self.device, timing=self.timing, dt=self.dt, build_s=self._build_s, compile_s=self._compile_s,
            run_s=run_s, replicas=built.layout.replicas, rounds=built.layout.rounds, chunks=chunks,
            compilations=self.compilations, n_synapses=self.synapses_per_sample,
            n_synapses_compiled=built.layout.replicas * self.synapses_per_sample, period_ms=self.period_ms(),
            build_dir=None if self.build_dir is None else str(self.build_dir),
            perturbation=[p.describe() for p in perturbations])
        result.meta["synaptic_events"] = synaptic_events(self.net, result, self.plan.fan_out)
        return result

    def _round_timing(self) -> layout.RoundTiming:
        net = perturb.with_latency(self.net, self.structure.latency) if self.structure.latency else self.net
        latency = 0 if self.timing == "precise" else len(net.layers) + 1
        aligned = layout.round_timing(net, self.dt, latency)
        if not self.pipelined:
            return aligned
        piped = layout.round_timing(net, self.dt, latency, pipelined=True, departures=self.structure.departures)
        return piped if piped.steps < aligned.steps else aligned  # a wave needs rounds shorter than the latency

