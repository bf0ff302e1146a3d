"""Run a :class:`~ttfs_brian.network.TTFSNetwork` in Brian2: runtime, C++ standalone or brian2cuda.

Network layout (one compiled network serves any number of batches):

- the input layer is a ``NeuronGroup`` whose neurons fire at their own ``t_in`` (a state
  variable; standalone runs take new values through ``run_args`` without recompiling, which a
  ``SpikeGeneratorGroup`` cannot do);
- every hidden layer and the output layer is a ``NeuronGroup`` of the one integrating model of
  :mod:`ttfs_brian.brian.equations` (parameters per variant and role listed there);
- every max pool is a ``NeuronGroup`` that fires with its first (or, for ``sign = -1``, its last)
  input; the pooled spike time is the exact input spike time;
- one ``Synapses`` object per layer, its indices from :mod:`ttfs_brian.brian.connectivity`.

**Batches: replicas side by side, rounds one after the other.** ``R`` samples run side by side:
every group has ``R`` copies of its neurons and every synapse list ``R`` index-shifted copies
(:func:`connectivity.replicate`). Replication amortises Brian2's fixed cost per time step and
object, which is large in runtime mode (Python). Measured (Brian2 2.9.0, 2 cores, 784-100-10
``exact`` network, dt = 0.01 ms, one sample per replica), seconds per sample: runtime (Cython) 0.27
(R = 1), 0.041 (R = 8), 0.011 (R = 64).

Standalone devices also *time-multiplex*: one run of the binary simulates ``K`` rounds, round
``k`` in ``[k P, (k + 1) P)`` (``P`` = :meth:`Simulator.duration_ms` rounded up to a multiple of
``dt``) holding samples ``k R .. k R + R - 1``. Every group counts time from its own round start
(``tr``, integer steps since ``round_step``, in :mod:`~ttfs_brian.brian.equations`); a
``run_regularly`` on the simulation clock (slot ``start``, before everything else) resets the
per-sample state at the first step of each round, moves ``round_step`` and loads the input spike
times of the round from a 2-D ``TimedArray`` (rounds x input neurons, ``dt = P``), whose values
every run takes through ``run_args``: no recompilation. (SPEC section 6 describes one spike-time
variable per input neuron set by ``run_args``; the input group still holds ``t_in``, but takes it
from the table at every round start, so that one run serves ``K`` samples.) A batch of ``N``
samples needs ``ceil(N / (R K))`` runs (``meta["chunks"]``; the last one padded with silent
inputs). Results never come from the final state: ``SpikeMonitor`` s (right after each layer's
reset, which sets ``t_spike``) record ``t_spike`` (and ``t_raw`` of hidden neurons) with the
absolute ``t`` that names the round; the output's ``v`` is read by a custom event on the last step
of each round (``EventMonitor``), and in ``exact`` the neurons that crossed their threshold before
``t_min`` report their final ``v`` and ``I`` the same way (the clipped / early-firing report).
Runtime keeps one round per run (``Network.restore`` between chunks, same monitors). Defaults:
standalone ``R = min(N, 4)``, ``K = ceil(N / R)`` bounded by ``max_spikes_per_run`` (monitor
memory) and by 1e9 steps per run; runtime ``R = N``; ``R`` is bounded by ``max_synapses``.

Why few replicas and many rounds in standalone: what a run of the binary pays per replica (creating
and sorting the synapses and their spike queues, writing every array to disk at the end) grows with
``R``, while the cost per step and object, which replicas amortise, is small in C++. Measured on
LeNet-5 (8 878 neurons and 412 960 synapses per sample, ``exact``, precise, 1000 test images, 2
OpenMP threads on 2 cores, wall time from creating the :class:`Simulator` to the result, compilation
included; ``experiments/bench_brian2.py``, ``results/bench_brian2.csv``), dt = 1 ms:

==================  ===========  ===============  =========  ===========
R x K               build (s)    compile (s)      run (s)    ms / image
==================  ===========  ===============  =========  ===========
1 x 1000            0.9          10.4             5.2        17.4
4 x 250 (default)   0.9          10.3             5.9        18.0
32 x 32             3.2          10.4             8.1        22.6
==================  ===========  ===============  =========  ===========

(``run`` includes reading the monitors and assembling the result, ~1 s; R = 1 ... 4 differ by about
the noise of this machine.) Precise timing is exact at any dt once the windows are dt-aligned, so
dt = 1 ms (windows of 8-11 ms) gives the same spike times as dt = 0.2 ms (20.5 ms / image): max
|spike time - analytic| 3.0e-13 ms (``exact``) and 2.8e-14 ms (``sparse``, 14.3 ms / image).

Compilation: Brian2 writes one C++ file per code object (~90 for LeNet-5) and compiles them with
``make``; :func:`_patch_makefile` makes that 34 s -> ~10 s on 2 cores (precompiled headers, lower
optimisation for set-up code). A ``build_dir`` reused by a later process recompiles only what
changed: Brian2 leaves unchanged sources alone and the patched makefile keeps its time stamp, so a
network of the same structure (other weights, thresholds, windows or rounds) compiles in ~1 s
instead of ~10 s (LeNet-5). Brian2 orders the declarations in ``objects.h``, which every source
includes, by Python's string hashing, so this holds across processes that share ``PYTHONHASHSEED``
(e.g. ``PYTHONHASHSEED=0``); with random seeds ``objects.h`` changes and everything is recompiled.

**Devices.** ``runtime`` builds the Brian2 objects once and restores their initial state before
each chunk (``Network.store``/``restore``). ``cpp_standalone`` generates and compiles one project
per :class:`Simulator` in its own directory with a private ``CPPStandaloneDevice`` (so several
simulators can coexist in one process), then reruns the binary with ``run_args`` for every chunk
(its makefile patched by :func:`_patch_makefile`);
:attr:`Simulator.compilations` counts the builds. All device-specific code is in
:meth:`Simulator._activate_device`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from ..cost import synaptic_events
from ..errors import InputError, ToolchainError
from ..grid_bound import grid_error_bound, uncertain_predictions
from ..network import Layer, TTFSNetwork
from ..result import SimulationResult, build_report, layer_record, no_flags, note_layer_flags
from ..validation import encode_inputs, finite
from .. import connectivity as conn_mod
from . import equations as eq
from ..connectivity import Connectivity

log = logging.getLogger(__name__)

DEVICES = ("runtime", "cpp_standalone", "cuda_standalone")
DEFAULT_MAX_SYNAPSES = 20_000_000
"""Upper bound on synapses in one compiled network (all replicas), which bounds the chunk size ``R``."""
DEFAULT_STANDALONE_REPLICAS = 4
"""Default ``R`` for standalone devices (more samples of a batch run as rounds, one after the other)."""
ROUND_CLOCK_SHORTENING = 1e-12
"""Relative amount by which the round-reset clock is shorter than a round (see ``_make_objects``)."""
DEFAULT_MAX_SPIKES_PER_RUN = 20_000_000
"""Upper bound on the spikes one standalone run records (K R neurons; ~28 bytes each), which bounds ``K``."""

class _PoolOrderFilter(logging.Filter):
    """Drop Brian2's "order of execution" warning for the pool synapses only.

    Their code counts inputs and takes the min/max of the input spike times, which are commutative,
    so the order in which synapses onto the same pooled neuron run cannot change the outcome.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "n_in_post += 1" not in record.getMessage()


logging.getLogger("brian2.codegen.generators.base").addFilter(_PoolOrderFilter())


def configure_cuda(compute_capability: float | None = None) -> None:
    """brian2cuda preferences so that ``cuda_standalone`` code also builds where no GPU is visible.

    Without ``nvidia-smi`` (no GPU) GPU detection is switched off and ``compute_capability`` (default
    9.0) and ``gpu_id`` 0 are set. Loop-invariant hoisting is off (see below). nvcc gets ``-std=c++17`` (Brian2's headers need it). When the
    ``nvidia-curand`` wheel is installed, its ``curand.h`` goes on the include path and a private
    folder with a ``libcurand.so`` link to the wheel's ``libcurand.so.10`` on the library path.
    """
    import brian2 as b2

    # brian2cuda declares a shared variable twice (a compile error) when a statement uses it both in
    # hoisted loop-invariant code and in per-neuron code; without hoisting there is one declaration.
    b2.prefs.codegen.loop_invariant_optimisations = False
    backend = b2.prefs.devices.cuda_standalone.cuda_backend
    if shutil.which("nvidia-smi") is None or compute_capability is not None:
        backend.detect_gpus = False
        backend.gpu_id = 0
        backend.compute_capability = float(compute_capability or 9.0)
    # CUDA >= 13's Thrust/CUB need C++17, for nvcc and for the host compiler flags it forwards.
    backend.extra_compile_args_nvcc = [f for f in backend.extra_compile_args_nvcc if not f.startswith("-std=")] + \
        ["-std=c++17"]
    gcc_flags = b2.prefs.codegen.cpp.extra_compile_args_gcc
    b2.prefs.codegen.cpp.extra_compile_args_gcc = [f for f in gcc_flags if not f.startswith("-std=")] + ["-std=c++17"]
    try:
        import nvidia.curand as curand_wheel
    except ImportError:
        return  # a CUDA toolkit with cuRAND is expected then
    root = Path(next(iter(curand_wheel.__path__)))
    links = Path(tempfile.gettempdir()) / "ttfs_brian_curand"
    links.mkdir(exist_ok=True)
    link = links / "libcurand.so"
    if not link.exists():
        link.symlink_to(root / "lib" / "libcurand.so.10")
    cpp = b2.prefs.codegen.cpp
    for key, folder in (("include_dirs", root / "include"), ("library_dirs", links),
                        ("runtime_library_dirs", root / "lib")):
        if str(folder) not in getattr(cpp, key):
            setattr(cpp, key, [*getattr(cpp, key), str(folder)])


class _TableGridFilter(logging.Filter):
    """Drop Brian2's "time grids not aligned" warning for the input table.

    Its ``dt`` is the round length ``P``, a multiple of the simulation ``dt`` that floating point
    division may not recover exactly; the table lookup rounds ``t / P`` to the nearest row (with a
    margin of a fraction of ``dt``), so every round start reads its own row.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "time grids not aligned" not in record.getMessage()


logging.getLogger("brian2.input.timedarray").addFilter(_TableGridFilter())


PCH_HEADER = "ttfs_pch_{level}.h"
PCH_LEVELS = ("O3", "O1")
PCH_INCLUDES = ('"objects.h"', '"synapses_classes.h"', '"brianlib/common_math.h"', '"brianlib/stdint_compat.h"',
                "<cmath>", "<ctime>", "<iostream>", "<fstream>", "<climits>")
"""What every generated code object includes (Brian2 2.9): one precompiled header instead of ~65 000
preprocessed lines parsed again for each of the ~90 code objects."""


def _patch_makefile(path: Path) -> None:
    """Make Brian2's generated makefile cheaper to run, with the same binary as a result.

    Measured on LeNet-5 (~90 code objects, 2 cores): ``make`` from 34 s to ~10 s.

    - Every source except ``objects.cpp`` is compiled with a precompiled header (``-include
      ttfs_pch_O3.h``, built once per optimisation level) of the headers that all code objects
      include: parsing them was ~0.35 s of the ~0.5 s each code object took. Where GCC cannot use
      the ``.gch`` it reads the header text instead, with the same result.
    - Header dependencies come from ``-MMD`` during compilation instead of one serial ``g++ -MM``
      pass over all sources before it (several seconds for a LeNet-sized project).
    - ``objects.cpp`` (array allocation, file I/O and the ``run_args`` parser: several thousand lines,
      no simulation code) is compiled with ``-O0`` instead of ``-O3`` (1.4 s instead of 7.3 s), and
      the code objects that do not loop over all neurons or synapses every step (set-up, resets,
      monitors, round starts, spike queues) with ``-O1`` (another 1.4 s less for LeNet-5).
    Without the expected lines (another Brian2 version) the makefile is left as it is.
    """
    text = path.read_text()
    rule = "make.deps: $(SRCS) $(H_SRCS)\n\t$(CXX) $(CXXFLAGS) -MM $(SRCS) > make.deps"
    include = "ifneq ($(wildcard $(DEPS)), )\ninclude $(DEPS)\nendif"
    compile_rule = "%.o : %.cpp makefile\n\t$(CXX) $(CXXFLAGS) $< -o $@"
    if any(line not in text for line in (rule, include, compile_rule, "\nCXXFLAGS = ")):
        log.debug("unexpected makefile layout; not patched")
        return
    lines = "".join(f"#include {name}\n" for name in PCH_INCLUDES)
    for level in PCH_LEVELS:
        header = path.parent / PCH_HEADER.format(level=level)
        if not header.exists() or header.read_text() != lines:  # unchanged: keep its time stamp (no rebuild)
            header.write_text(lines)
    text = text.replace(rule, "make.deps:\n\ttouch make.deps")
    # One flag set per object, chosen in the recipe: target-specific variables would also apply to the
    # precompiled header when it is built as a prerequisite, and GCC 12 crashes (or worse) on a header
    # precompiled with other -O flags than the source that includes it.
    text = text.replace(include, "\n".join([
        "-include $(OBJS:.o=.d)",
        "PCH_OBJS = $(filter-out objects.o synapses_classes.o,$(OBJS))",
        # (findstring, not a % pattern: Brian2 appends _1, _2, ... to the names while objects of an
        # earlier simulator in the same process are alive)
        "HOT_OBJS = $(foreach o,$(filter-out code_objects/after_run_%,$(OBJS)),$(if $(or "
        "$(findstring _syn_pre_codeobject,$o),$(findstring _stateupdater_codeobject,$o),"
        "$(findstring _thresholder_codeobject,$o)),$o))",
        "SETUP_OBJS = $(filter-out objects.o main.o $(HOT_OBJS),$(OBJS))",
        "LEVEL = $(if $(filter objects.o,$@),O0,$(if $(filter $@,$(SETUP_OBJS)),O1,O3))",
        f"PCH = {PCH_HEADER.format(level='$(LEVEL)')}",
        "$(PCH_OBJS): " + " ".join(f"{PCH_HEADER.format(level=level)}.gch" for level in PCH_LEVELS),
        f"{PCH_HEADER.format(level='%')}.gch: {PCH_HEADER.format(level='%')} $(H_SRCS) $(wildcard brianlib/*.h) makefile"
        "\n\t$(CXX) $(CXXFLAGS) -$* -x c++-header $< -o $@",
    ]))
    text = text.replace(compile_rule, "%.o : %.cpp makefile\n"
                        "\t$(CXX) $(CXXFLAGS) -$(LEVEL) $(if $(filter $@,$(PCH_OBJS)),-include $(PCH)) $< -o $@")
    text = text.replace("\nCXXFLAGS = ", "\nCXXFLAGS = -MMD -MP ", 1)
    path.write_text(text)


def _object_name(index: int, role: str) -> str:
    """Brian2 name of the group of stage ``index``.

    Names depend on the network's structure only (not on layer names or the simulator instance):
    Brian2's Cython target puts object names into the generated code, so equal names let every
    network of the same structure reuse the compiled (cached) code instead of compiling anew.
    Equal names in different simulators do not clash: each simulator has its own ``Network``
    (and, in standalone mode, its own device).
    """
    return f"ttfs_{index}_{role}"


@dataclass
class _Stage:
    """One layer of the Brian2 network: its role, incoming connectivity and (once built) its objects."""

    layer: Layer
    role: str  # "input", "hidden", "pool", "output"
    pred: Layer | None = None
    conn: Connectivity | None = None
    group: Any = None
    synapses: Any = None
    params: dict[str, np.ndarray] = field(default_factory=dict)
    shared: dict[str, float] = field(default_factory=dict)  # per-layer times in ms


class Simulator:
    """Brian2 simulation of a converted network, built once and run on many batches.

    Parameters
    ----------
    net:
        The converted network (a chain of layers).
    device:
        ``"runtime"`` (Brian2's runtime code generation), ``"cpp_standalone"`` (one compiled
        binary, rerun with new inputs) or ``"cuda_standalone"`` (brian2cuda; needs its own
        Python >= 3.12 environment).
    timing:
        ``"precise"``: exact off-grid spike times (SPEC section 6); ``"grid"``: plain Brian2, spikes
        on the ``dt`` grid with one step of latency per layer.
    dt:
        Integration step in ms; ``None`` takes the network's ``dt`` (or 0.01 ms). Precise timing is
        exact (to rounding) when the windows are multiples of ``dt``.
    threads:
        OpenMP threads for ``cpp_standalone`` (``prefs.devices.cpp_standalone.openmp_threads``).
    build_dir:
        Project directory for standalone devices (a fresh temporary directory if ``None``).
    batch_size:
        Samples simulated side by side (replicas ``R``); default: the first batch's size (runtime) or
        at most 4 of it (standalone), capped so that the network has at most ``max_synapses`` synapses.
    codegen_target:
        Runtime device only: Brian2's code generation target (``"cython"``, ``"numpy"``); ``None``
        keeps ``prefs.codegen.target`` (Cython when a compiler is available). ``"numpy"`` needs no
        compilation, which suits small networks and tests.
    compute_capability:
        ``cuda_standalone`` only: the GPU architecture to compile for (e.g. ``9.0``). Needed where no
        GPU can be detected (building without a GPU); by default brian2cuda asks the GPU.
    rounds:
        Standalone only: samples per replica simulated one after the other in one run of the binary
        (``K``); default: enough for the first batch, at most ``max_spikes_per_run`` recorded spikes
        (``K R`` times the neurons per sample). Runtime always runs one round.
    record_v:
        ``{layer name: neuron indices}`` of hidden or output layers whose ``v`` is recorded for sample
        0, returned as ``result.meta["traces"][layer] = (t_ms, v)`` with ``v`` of shape
        ``(neurons, steps)`` (``t`` from the round start; the threshold is the layer's
        ``threshold`` array). Every result also has ``meta["spike_monitor"][layer] = (neuron index,
        spike time ms)`` of sample 0 for the coded layers, straight from the ``SpikeMonitor``.
    """

    def __init__(self, net: TTFSNetwork, device: str = "runtime", timing: str = "precise", dt: float | None = 0.01,
                 threads: int | None = None, build_dir: str | os.PathLike | None = None,
                 batch_size: int | None = None, max_synapses: int = DEFAULT_MAX_SYNAPSES,
                 codegen_target: str | None = None, compute_capability: float | None = None,
                 rounds: int | None = None, max_spikes_per_run: int = DEFAULT_MAX_SPIKES_PER_RUN,
                 record_v: dict[str, Any] | None = None) -> None:
        if device not in DEVICES:
            raise InputError(f"unknown device {device!r}; choose one of {DEVICES}")
        if timing not in eq.TIMINGS:
            raise InputError(f"unknown timing {timing!r}; choose one of {eq.TIMINGS}")
        dt = net.dt if dt is None else dt
        dt = 0.01 if dt is None else finite(dt, "dt (ms)", low=0.0, low_open=True)
        if threads is not None and (int(threads) < 1 or device == "runtime"):
            raise InputError("threads (OpenMP) must be >= 1 and needs device='cpp_standalone'")
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if rounds is not None and (int(rounds) < 1 or (device == "runtime" and int(rounds) != 1)):
            raise InputError(f"rounds must be >= 1 (and 1 for device='runtime'), got {rounds}")
        self.net = net
        self.device = device
        self.timing = timing
        self.dt = dt
        self.threads = None if threads is None else int(threads)
        self.build_dir = None if build_dir is None else Path(build_dir)
        self.batch_size = batch_size
        self.max_synapses = int(max_synapses)
        if codegen_target is not None and device != "runtime":
            raise InputError("codegen_target applies to device='runtime' only")
        self.codegen_target = codegen_target
        self.compute_capability = compute_capability
        self.compilations = 0
        """Number of times Brian2 code was generated and compiled (standalone: must stay 1)."""
        self.replicas: int | None = None
        self.rounds: int | None = None if rounds is None else int(rounds)
        """Samples per replica simulated one after the other in one standalone run (``K``)."""
        self.max_spikes_per_run = int(max_spikes_per_run)
        self.record_v = {key: [int(i) for i in np.atleast_1d(value)] for key, value in (record_v or {}).items()}
        self._monitors: dict[tuple[str, str], Any] = {}
        self._table = None
        self._stages = self._plan()
        self._network = None
        self._device_obj = None
        self._build_s = 0.0
        self._compile_s = 0.0
        self._runs = 0
        self._check_alignment()

    # ------------------------------------------------------------------ structure
    def _plan(self) -> list[_Stage]:
        """Roles and connectivity of every layer, in topological order (no Brian2 objects yet)."""
        stages = []
        for layer in self.net.layers.values():
            if layer.kind == "input":
                stages.append(_Stage(layer, "input"))
                continue
            pred = self.net.predecessor(layer)
            conn = conn_mod.for_layer(layer, pred)
            role = "output" if layer.is_output else ("pool" if layer.kind == "maxpool" else "hidden")
            stages.append(_Stage(layer, role, pred, conn))
        return stages

    @property
    def synapses_per_sample(self) -> int:
        return sum(stage.conn.n_synapses for stage in self._stages if stage.conn is not None)

    def _check_alignment(self) -> None:
        """Note window edges off the dt grid.

        The gates integrate the exact fraction of a step inside a window, so ``v`` stays exact at
        every step end wherever the edges lie; only a crossing less than one step after an edge at
        which the slope changes (sparse: ``t_min``; exact: the padding current at ``t_min``) is
        back-extrapolated with the slope after the edge.
        """
        edges = np.array([t for layer in self.net.layers.values() for t in (layer.t_min, layer.t_max)])
        off = np.abs(edges / self.dt - np.round(edges / self.dt)) > 1e-6
        if off.any() and self.timing == "precise":
            log.info("%d window edges are not multiples of dt = %g ms; a neuron crossing its threshold less "
                     "than one step after an edge where its slope changes may be off by up to dt (convert with "
                     "dt=%g to align the windows)", int(off.sum()), self.dt, self.dt)

    def duration_ms(self) -> float:
        """Simulated time: up to the readout at the output's ``t_min``, plus the readout step.

        Precise timing delivers every spike in the step in which it occurs (layers take turns within
        a step), so the last step may start at ``t_min``; grid timing adds up to one step of latency
        per layer, and those steps are simulated too so that every (late) spike is recorded.
        """
        latency = 0 if self.timing == "precise" else len(self._stages) + 1
        return self.net.output_layer.t_min + (latency + 1) * self.dt

    def steps_per_round(self) -> int:
        return int(math.ceil(self.duration_ms() / self.dt - 1e-9))

    def period_ms(self) -> float:
        """Length ``P`` of one round: the duration rounded up to a multiple of ``dt``."""
        return self.steps_per_round() * self.dt

    @property
    def samples_per_run(self) -> int | None:
        """Samples one run of the network holds: replicas times rounds (``None`` before building)."""
        return None if self.replicas is None else self.replicas * self.rounds

    @property
    def neurons_per_sample(self) -> int:
        return sum(stage.layer.size for stage in self._stages)

    # ------------------------------------------------------------------ parameters per stage
    def _parameters(self, stage: _Stage) -> None:
        """Per-neuron arrays and per-layer (shared) times of one stage (see the table in equations.py)."""
        net, layer, pred = self.net, stage.layer, stage.pred
        size = layer.size
        if stage.role == "pool":
            sign = np.repeat(np.asarray(layer.arrays["sign"], dtype=np.float64), size // len(layer.arrays["sign"]))
            stage.params = {"pool_sign": sign, "need": np.where(sign > 0, 1.0, stage.conn.fan_in.astype(np.float64))}
        elif stage.role == "hidden":
            theta = np.asarray(layer.arrays["threshold"], dtype=np.float64).reshape(-1)
            theta = np.broadcast_to(theta, (size,)).copy()
            if net.variant == "exact":
                stage.params = {"alpha": np.ones(size), "beta": stage.conn.pad_sum.copy(), "theta": theta}
                stage.shared = {"t_on": pred.t_min, "t_off": eq.NEVER_MS, "t_fire": pred.t_min}
            else:
                stage.params = {"alpha": np.zeros(size), "beta": np.ones(size), "theta": theta}
                stage.shared = {"t_on": pred.t_min, "t_off": layer.t_min, "t_fire": layer.t_min}
            stage.shared.update(tau_c=net.tau_c, t_late=layer.t_min, t_max=layer.t_max)
        elif stage.role == "output":
            if net.variant == "exact":
                alpha = np.broadcast_to(np.asarray(layer.arrays["drive"], dtype=np.float64).reshape(-1), (size,))
            else:
                alpha = np.zeros(size)
            stage.params = {"alpha": np.array(alpha)}
            stage.shared = {"tau_c": net.tau_c, "t_on": pred.t_min, "t_off": layer.t_min}

    # ------------------------------------------------------------------ building
    def _make_objects(self, replicas: int, rounds: int) -> Any:
        """Create the Brian2 groups, synapses and monitors for ``replicas`` samples side by side and
        ``rounds`` samples one after the other (standalone only; runtime has one round); returns the Network."""
        import brian2 as b2

        if self.device == "cuda_standalone":
            # brian2cuda's synaptic pathway code refers to ``defaultclock`` by name
            clock = b2.defaultclock
            clock.dt = self.dt * b2.ms
        else:
            clock = b2.Clock(dt=self.dt * b2.ms, name="ttfs_clock")
        period = self.period_ms()
        multiplexed = self.device != "runtime"
        namespace = {"tol": eq.TOL, "t_eps": eq.TIME_EPS_MS * b2.ms, "t_never": eq.NEVER_MS * b2.ms}
        objects = []
        stages_by_name = {}
        self._monitors = {}
        self._table = None
        for k, stage in enumerate(self._stages):
            self._parameters(stage)
            name = _object_name(k, stage.role)
            n = replicas * stage.layer.size
            reset_code = eq.ROUND_RESET[stage.role]
            group_ns = namespace
            spike_vars = ["t_spike"]
            if stage.role == "input":
                if multiplexed:
                    self._table = b2.TimedArray(np.full((rounds, n), eq.NEVER_MS) * b2.ms, dt=period * b2.ms,
                                                name="ttfs_t_in_table")
                    group_ns = {**namespace, "t_in_table": self._table}
                group = b2.NeuronGroup(n, eq.INPUT_MODEL, threshold=eq.INPUT_THRESHOLD,
                                       reset=eq.INPUT_RESET[self.timing], clock=clock,
                                       namespace=group_ns, name=name)
                group.t_in = eq.NEVER_MS * b2.ms
            elif stage.role == "pool":
                group = b2.NeuronGroup(n, eq.POOL_MODEL, threshold=eq.POOL_THRESHOLD,
                                       reset=eq.POOL_RESET[self.timing], clock=clock,
                                       namespace=namespace, name=name)
                group.t_first = eq.NEVER_MS * b2.ms
                group.t_last = -eq.NEVER_MS * b2.ms
            elif stage.role == "hidden":
                threshold = eq.EXACT_THRESHOLD if self.net.variant == "exact" else eq.SPARSE_THRESHOLD[self.timing]
                report = self.net.variant == "exact"
                events = {"report": eq.REPORT_EVENT} if report else {}  # (Brian2 adds "spike" to this dict)
                group = b2.NeuronGroup(n, eq.INTEGRATOR_MODEL, threshold=threshold,
                                       reset=eq.INTEGRATOR_RESET[self.timing], method="euler", clock=clock,
                                       events=events, namespace=namespace, name=name)
                spike_vars = ["t_spike", "t_raw"]
                if report:
                    self._monitors[(stage.layer.name, "report")] = b2.EventMonitor(
                        group, "report", variables=["v", "I"], name=f"{name}_report")
            else:
                group = b2.NeuronGroup(n, eq.OUTPUT_MODEL, method="euler", clock=clock,
                                       events={"readout": eq.END_OF_ROUND}, namespace=namespace, name=name)
                self._monitors[(stage.layer.name, "readout")] = b2.EventMonitor(
                    group, "readout", variables=["v"], name=f"{name}_readout")
            if stage.role != "output":
                # Layer by layer within each step (slot after_resets, order 10 k + ...): the inputs that
                # arrived in this step (pathway into stage k, order 10 k) are in v before the threshold
                # test, and the spikes reach stage k + 1 before its test in the same step. With Brian2's
                # default schedule every group tests its threshold before any pathway runs, so a neuron
                # could fire on a v that lacks an (inhibitory) input of the same step; a pool would pass
                # its spike on one step late.
                group.thresholder["spike"].when = "after_resets"
                group.thresholder["spike"].order = 10 * k + 1
                group.resetter["spike"].when = "after_resets"
                group.resetter["spike"].order = 10 * k + 2
                # After the reset, which sets t_spike (the spike is stamped with the step start t).
                self._monitors[(stage.layer.name, "spikes")] = b2.SpikeMonitor(
                    group, variables=spike_vars, when="after_resets", order=10 * k + 3, name=f"{name}_spikes")
            for key, value in stage.params.items():
                setattr(group, key, np.tile(value, replicas))
            for key, value in stage.shared.items():
                setattr(group, key, value * b2.ms)
            if stage.role in ("hidden", "output"):
                group.t_end = period * b2.ms
            if multiplexed:
                # Brian2 runs two clocks in the same step only while their times agree to 1e-14 s
                # (absolute); beyond ~64 s of simulated time k P and n dt drift further apart, and the
                # reset ran after the first step of some rounds (which then lost their readout). A round
                # clock shorter by 1e-12 relative always runs first: ahead by ~1e-12 t, more than the
                # rounding of t (~1e-16 t) and less than a step (for t < 1e12 dt; runs have < 1e9 steps).
                # Its code reads the simulation clock's t and dt, so round_step is the exact step count.
                group.run_regularly(reset_code, dt=period * (1 - ROUND_CLOCK_SHORTENING) * b2.ms, when="start",
                                    order=-100, name=f"{name}_round")
            stage.group = group
            objects.append(group)
            stages_by_name[stage.layer.name] = stage
            layer_name = stage.layer.name
            if layer_name in self.record_v:
                if stage.role not in ("hidden", "output"):
                    raise InputError(f"record_v: layer {layer_name!r} has no membrane potential (role {stage.role})")
                self._monitors[(layer_name, "trace")] = b2.StateMonitor(
                    group, "v", record=self.record_v[layer_name], name=f"{name}_trace")
            if stage.conn is None:
                continue
            source = stages_by_name[stage.pred.name].group
            pre, post, weight = conn_mod.replicate(stage.conn, replicas)
            if stage.role == "pool":
                synapses = b2.Synapses(source, group, on_pre=eq.ON_PRE_POOL, clock=clock,
                                       namespace=namespace, name=f"{name}_syn")
            else:
                synapses = b2.Synapses(source, group, model=eq.SYNAPSE_MODEL,
                                       on_pre=eq.ON_PRE_INTEGRATOR[self.timing], clock=clock,
                                       namespace=namespace, name=f"{name}_syn")
            # After the resets, so that the presynaptic t_spike is already set (SPEC section 6).
            synapses.pre.when = "after_resets"
            synapses.pre.order = 10 * k
            if pre.size:
                synapses.connect(i=pre, j=post)
                if stage.role != "pool":
                    synapses.w = weight
            stage.synapses = synapses
            objects.append(synapses)
        objects.extend(self._monitors.values())
        return b2.Network(*objects, name="ttfs_network")

    @contextlib.contextmanager
    def _activate_device(self) -> Iterator[Any]:
        """Make this simulator's Brian2 device current (and its preferences) for the duration of the block.

        All device-specific code lives here: runtime needs nothing; ``cpp_standalone`` gets a private
        ``CPPStandaloneDevice`` (so that several simulators, and the runtime device, coexist in one
        process) and the OpenMP preference; ``cuda_standalone`` needs brian2cuda.
        """
        import brian2 as b2
        from brian2.devices.device import reset_device, set_device

        if self.device == "runtime":
            old_target = b2.prefs.codegen.target
            if self.codegen_target is not None:
                b2.prefs.codegen.target = self.codegen_target
            set_device("runtime")
            try:
                yield None
            finally:
                b2.prefs.codegen.target = old_target
                reset_device()
            return
        if self.device == "cuda_standalone":
            try:
                import brian2cuda  # noqa: F401
                from brian2cuda.device import CUDAStandaloneDevice
            except ImportError as exc:
                raise ToolchainError(
                    "device='cuda_standalone' needs brian2cuda (pip install brian2cuda==1.0b1), which pins "
                    "brian2==2.10.1 and therefore Python >= 3.12: run it from a separate environment, or use "
                    "device='cpp_standalone' or device='runtime'") from exc
            factory = CUDAStandaloneDevice
            configure_cuda(self.compute_capability)
        else:
            from brian2.devices.cpp_standalone.device import CPPStandaloneDevice

            factory = CPPStandaloneDevice
        if self._device_obj is None:
            self._check_toolchain()
            self._device_obj = factory()
        old_threads = b2.prefs.devices.cpp_standalone.openmp_threads
        if self.threads is not None:
            b2.prefs.devices.cpp_standalone.openmp_threads = self.threads
        set_device(self._device_obj, build_on_run=False)
        try:
            yield self._device_obj
        finally:
            b2.prefs.devices.cpp_standalone.openmp_threads = old_threads
            reset_device()

    def _check_toolchain(self) -> None:
        """A standalone build needs make and a C++ compiler; say so before Brian2 fails obscurely."""
        import brian2 as b2

        tools = [b2.prefs.devices.cpp_standalone.make_cmd_unix.split()[0], os.environ.get("CXX", "g++").split()[0]]
        if self.device == "cuda_standalone":
            tools.append("nvcc")
        for tool in tools:
            if shutil.which(tool) is None:
                raise ToolchainError(
                    f"device={self.device!r} needs the build tool '{tool}', which is not on PATH; install it "
                    "(e.g. apt-get install build-essential) or use device='runtime'")

    def _build(self, replicas: int, rounds: int) -> None:
        """Create (and for standalone devices generate and compile) the network for ``replicas`` samples
        side by side and ``rounds`` samples one after the other."""
        import brian2 as b2

        self.replicas, self.rounds = replicas, rounds
        started = time.perf_counter()
        log.info("building the Brian2 network (%s, %s timing, dt %g ms): %d replicas x %d rounds, %d synapses",
                 self.device, self.timing, self.dt, replicas, rounds, replicas * self.synapses_per_sample)
        if self.device != "runtime":
            log.info("generating and compiling the %s project (C++%s; tens of seconds, once per simulator)",
                     self.device, "/CUDA" if self.device == "cuda_standalone" else "")
        with self._activate_device() as device:
            network = self._make_objects(replicas, rounds)
            if device is None:  # runtime
                network.store("initial")
                self._build_s = time.perf_counter() - started
                self._compile_s = 0.0
            else:
                # Half a step short of K P: the round clock (shorter than P, see _make_objects) must not
                # tick a K+1-th time. When a whole run lasts less than 10 ms, that extra tick lies within
                # Brian2's absolute clock epsilon (1e-14 s) of K P and dragged the simulation clock into
                # an extra step, in which the inputs of the first step fired again for a round that does
                # not exist (IndexError in the readout).
                network.run((rounds * self.period_ms() - 0.5 * self.dt) * b2.ms, namespace={})
                self._build_s = time.perf_counter() - started
                directory = self.build_dir or Path(tempfile.mkdtemp(prefix="ttfs_brian_standalone_"))
                self.build_dir = Path(directory)
                compiled = time.perf_counter()
                try:
                    if self.device == "cpp_standalone":
                        makefile = self.build_dir / "makefile"
                        before = (makefile.read_text(), makefile.stat()) if makefile.exists() else None
                        device.build(directory=str(self.build_dir), compile=False, run=False, with_output=False)
                        _patch_makefile(makefile)
                        if before is not None and makefile.read_text() == before[0]:
                            # unchanged: keep its time stamp, so that make rebuilds only changed sources
                            os.utime(makefile, ns=(before[1].st_atime_ns, before[1].st_mtime_ns))
                        device.compile_source(str(self.build_dir), None, False, False)
                    else:
                        device.build(directory=str(self.build_dir), compile=True, run=False, with_output=False)
                except RuntimeError as exc:
                    raise ToolchainError(
                        f"building the {self.device} project in {self.build_dir} failed ({exc}); check the C++ "
                        "toolchain, or use device='runtime'") from exc
                self._compile_s = time.perf_counter() - compiled
            self.compilations += 1
        self._network = network
        log.info("built %s network: %d replicas x %d rounds, %d synapses, build %.2f s, compile %.2f s", self.device,
                 replicas, rounds, replicas * self.synapses_per_sample, self._build_s, self._compile_s)

    def _layout(self, n: int) -> tuple[int, int]:
        """Replicas ``R`` and rounds ``K`` for a first batch of ``n`` samples (see the class docstring)."""
        cap = max(1, self.max_synapses // max(1, self.synapses_per_sample))
        if self.batch_size is not None:
            replicas = self.batch_size
        elif self.device == "runtime":
            replicas = n
        else:
            replicas = min(n, DEFAULT_STANDALONE_REPLICAS)
        replicas = max(1, min(replicas, cap))
        if self.device == "runtime":
            return replicas, 1
        # round_step is a 32-bit Brian2 integer, and the round clock stays ahead only for t < 1e9 dt
        step_limit = 10**9 // self.steps_per_round()
        if self.rounds is not None:
            if self.rounds > step_limit:
                raise InputError(f"rounds={self.rounds} x {self.steps_per_round()} steps exceeds 1e9 steps in one "
                                 f"run; use at most {step_limit} rounds (or a larger dt)")
            return replicas, self.rounds
        most = max(1, self.max_spikes_per_run // max(1, replicas * self.neurons_per_sample))
        return replicas, max(1, min(math.ceil(n / replicas), most, step_limit))

    def build(self, batch_size: int = 1) -> None:
        """Generate and compile the network for batches of ``batch_size`` samples (replicas and, for
        standalone devices, rounds chosen as in :meth:`run`), without running it.

        ``run`` builds on first use; call this to build ahead, or to build ``cuda_standalone`` code on
        a machine without a GPU (running it needs one).
        """
        if not self.compiled:
            self._build(*self._layout(max(1, int(batch_size))))

    @property
    def compile_s(self) -> float:
        """Seconds spent generating and compiling standalone code (0 for runtime)."""
        return self._compile_s

    @property
    def compiled(self) -> bool:
        return self._network is not None

    # ------------------------------------------------------------------ running
    def _encode(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input spike times (ms; silent = NEVER) and the clipped mask, as in the analytic engine."""
        u, clipped = encode_inputs(self.net, data)
        t_in = self.net.input.t_max - u * self.net.tau_c
        if self.net.variant == "sparse":
            t_in = np.where(u > 0, t_in, eq.NEVER_MS)  # value 0 is silence
        return t_in.reshape(data.shape[0], -1), clipped

    def _simulate(self, t_in: np.ndarray) -> None:
        """Simulate ``R K`` samples (``t_in`` of shape ``(K R, P_in)``, sample ``k R + r`` in round ``k``,
        replica ``r``); the monitors hold the results afterwards."""
        import brian2 as b2

        if self.device == "runtime":
            with self._activate_device():
                self._network.restore("initial")
                self._stages[0].group.t_in = t_in.reshape(-1) * b2.ms
                self._network.run(self.period_ms() * b2.ms, namespace={})
            return
        device = self._device_obj
        device.run(directory=str(self.build_dir), with_output=False,
                   run_args={self._table: t_in.reshape(self.rounds, -1) * b2.ms})
        for name in list(device.run_args_arrays):  # the input table file is never needed again
            with contextlib.suppress(OSError):
                os.remove(self.build_dir / "static_arrays" / name)

    def _read(self, key: tuple[str, str], *names: str) -> list[np.ndarray]:
        """Recorded arrays of one monitor, read through the variable's own device (standalone result
        files or runtime arrays), independent of which Brian2 device is current now."""
        monitor = self._monitors[key]
        return [np.asarray(monitor.variables[name].get_value()) for name in names]

    def _events(self, stage: _Stage, key: str, *names: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(sample within the run, neuron within the sample, recorded values in ms or units of v) of one
        monitor; only valid until the next run (runtime arrays are views)."""
        index, t, *values = self._read((stage.layer.name, key), "i", "t", *names)
        per_ms = 1e3 / self.period_ms()
        rounds = (t * per_ms + 0.5 * self.dt / self.period_ms()).astype(np.int64)  # t >= 0: truncation is floor
        replica = index // stage.layer.size
        neuron = index - replica * stage.layer.size
        if rounds.size and (rounds.max() >= self.rounds or replica.max() >= self.replicas):
            raise RuntimeError(f"internal error: layer {stage.layer.name!r} recorded an event in round "
                               f"{rounds.max()} / replica {replica.max()} of a run with {self.rounds} rounds and "
                               f"{self.replicas} replicas")
        return rounds * self.replicas + replica, neuron.astype(np.int64), values

    def run(self, x: np.ndarray) -> SimulationResult:
        """Simulate a batch ``x`` of shape ``(N, *input_shape)`` (raw inputs, as for the ReLU network)."""
        from ..validation import validate_inputs

        data = validate_inputs(self.net, x)
        n = data.shape[0]
        if n == 0:
            raise InputError("empty batch: x has 0 samples")
        t_in, input_clipped = self._encode(data)
        if not self.compiled:
            self._build(*self._layout(n))
        per_run = self.replicas * self.rounds
        chunks = math.ceil(n / per_run)
        padded = np.full((chunks * per_run, t_in.shape[1]), eq.NEVER_MS)
        padded[:n] = t_in
        # Flat arrays (sample-major) of what every sample needs: spike times and the output's v. The
        # neurons that crossed before t_min are few: kept as event lists (flat index, values).
        raw = {stage.layer.name: np.full(chunks * per_run * stage.layer.size, np.nan) for stage in self._stages}
        crossed: dict[str, list[np.ndarray]] = {stage.layer.name: [] for stage in self._stages}
        reports: dict[str, list[tuple[np.ndarray, ...]]] = {stage.layer.name: [] for stage in self._stages}
        started = time.perf_counter()
        meta: dict[str, Any] = {}
        progress = tqdm(total=chunks, unit="run", desc=f"Brian2 {self.device}", disable=None, leave=False)
        if self.device == "runtime" and self._runs == 0:
            # Brian2 compiles the Cython code objects in the first run (minutes; cached for later processes)
            progress.set_description("Brian2 runtime: compiling code objects (first run only)")
            log.info("first runtime run: Brian2 generates and compiles its code objects (%s target); this can take "
                     "minutes and is cached for later runs", self.codegen_target or "default")
        for chunk in range(chunks):
            self._simulate(padded[chunk * per_run:(chunk + 1) * per_run])
            self._runs += 1
            progress.set_description(f"Brian2 {self.device}")
            progress.update()
            offset = chunk * per_run
            for stage in self._stages:
                name, size = stage.layer.name, stage.layer.size
                if stage.role == "output":
                    sample, neuron, (v,) = self._events(stage, "readout", "v")
                    raw[name][(offset + sample) * size + neuron] = v
                    continue
                names = ("t_spike", "t_raw") if stage.role == "hidden" else ("t_spike",)
                sample, neuron, values = self._events(stage, "spikes", *names)
                flat = (offset + sample) * size + neuron
                raw[name][flat] = values[0] * 1e3  # Brian2 stores seconds
                if stage.role == "hidden":
                    crossed[name].append(flat[values[1] * 1e3 < stage.layer.t_min - eq.TIME_EPS_MS])
                if chunk == 0:
                    first = sample == 0
                    meta.setdefault("spike_monitor", {})[name] = (neuron[first], values[0][first] * 1e3)
                if (name, "report") in self._monitors:
                    sample, neuron, (v, current) = self._events(stage, "report", "v", "I")
                    reports[name].append(((offset + sample) * size + neuron, v.copy(), current.copy()))
            if chunk == 0:
                for (name, kind), monitor in self._monitors.items():
                    if kind == "trace":
                        t, v = self._read((name, kind), "t", "v")
                        first = t * 1e3 < self.period_ms() - 0.5 * self.dt  # sample 0 is round 0
                        meta.setdefault("traces", {})[name] = (t[first] * 1e3, np.asarray(v)[first].T.copy())
        progress.close()
        run_s = time.perf_counter() - started
        result = self._assemble(raw, crossed, reports, n, input_clipped)
        result.meta.update(meta)
        result.meta.update(
            device=self.device, timing=self.timing, dt=self.dt, build_s=self._build_s, compile_s=self._compile_s,
            run_s=run_s, replicas=self.replicas, rounds=self.rounds, chunks=chunks, compilations=self.compilations,
            n_synapses=self.synapses_per_sample, n_synapses_compiled=self.replicas * self.synapses_per_sample,
            duration_ms=self.duration_ms(), period_ms=self.period_ms(),
            build_dir=None if self.build_dir is None else str(self.build_dir))
        fan_out = {stage.layer.name: stage.conn.fan_out for stage in self._stages if stage.conn is not None}
        result.meta["synaptic_events"] = synaptic_events(self.net, result, fan_out)
        return result

    # ------------------------------------------------------------------ results
    def _assemble(self, raw: dict[str, np.ndarray], crossed: dict[str, list[np.ndarray]],
                  reports: dict[str, list[tuple[np.ndarray, ...]]], n: int,
                  input_clipped: np.ndarray) -> SimulationResult:
        """Spike times, logits and the report from the monitored values (first ``n`` samples)."""
        net = self.net
        spike_times: dict[str, np.ndarray] = {}
        records, reasons = [], no_flags(n)
        logits = None
        bound = None
        if self.timing == "grid":
            bound = grid_error_bound(net, self.dt, {s.layer.name: s.conn for s in self._stages if s.conn is not None})
        for stage in self._stages:
            layer = stage.layer
            values = raw[layer.name][:n * layer.size]
            if stage.role == "output":
                v = values.reshape(n, -1)
                if np.isnan(v).any():
                    raise RuntimeError("the output layer was not read out in every round (internal error)")
                logits = v + np.asarray(layer.arrays["bias"]).reshape(1, -1) if net.variant == "sparse" else v
                continue
            times = values.reshape(n, *layer.shape)
            clipped = np.zeros(values.shape, dtype=bool)
            early = np.zeros(values.shape, dtype=bool)
            if stage.role == "input":
                clipped = input_clipped.reshape(-1)
            elif stage.role == "hidden":
                before = np.concatenate([np.zeros(0, dtype=np.int64), *crossed[layer.name]])
                before = before[before < n * layer.size]
                if net.variant == "exact":
                    # Clipped: the closed-form crossing (all inputs arrived, the line of the final slope)
                    # lies before t_min; early: the true crossing does, but the closed form does not.
                    # A crossing at or after t_min has the final slope already, so only neurons that
                    # crossed before t_min can be either (they alone report v and I at the round end).
                    early[before] = True
                    for flat, v, current in reports[layer.name]:
                        keep = flat < n * layer.size
                        flat, v, current = flat[keep], v[keep], current[keep]
                        neuron = flat % layer.size
                        rate = stage.params["alpha"][neuron] + stage.params["beta"][neuron] + current
                        closed = self.period_ms() - net.tau_c * (v - stage.params["theta"][neuron]) / np.where(
                            rate > 0, rate, np.nan)
                        clipped[flat] = np.nan_to_num(closed, nan=np.inf) < layer.t_min - eq.TIME_EPS_MS
                    clipped &= early
                    early &= ~clipped
                else:
                    clipped[before] = True
            for key in (layer.name, *layer.aliases):
                spike_times[key] = times
            clipped_n, early_n = (mask.reshape(n, -1).sum(axis=1) for mask in (clipped, early))
            worst = 0.0 if bound is None else float(bound.spike_ms[layer.name].max())
            records.append(layer_record(layer.name, layer.kind, times, clipped_n, early_n, worst))
            note_layer_flags(reasons, layer.kind, clipped_n, early_n)
        assert logits is not None
        if bound is not None:
            reasons["uncertain_prediction"] = uncertain_predictions(logits, bound.logits)
        return SimulationResult(logits, spike_times, build_report(records), reasons, backend="brian2", meta={},
                                error_bound=bound)
