"""One adapter per Brian2 device behind a small common interface; all device-specific code lives here.

An adapter makes its device current for a block (:meth:`activate`), gives the clock the network runs
on, builds a network (runtime: store its initial state; standalone: generate and compile the project
once) and runs one chunk of samples (runtime: restore and run; standalone: rerun the binary with new
input spike times through ``run_args``, no recompilation). The model code never branches on the
device; the simulator picks an adapter with :func:`adapter`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError, ToolchainError
from ..neuron import NEVER_MS
from . import toolchain
from .compile_cache import ObjectCache, cache_dir

DEVICES = ("runtime", "cpp_standalone", "cuda_standalone")


class RuntimeAdapter:
    """Brian2's runtime device (Cython or NumPy code generation): one round per run, restored between runs."""

    name = "runtime"
    multiplexed = False

    def __init__(self, codegen_target: str | None = None, **_: Any):
        self.codegen_target = codegen_target

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        b2 = toolchain.import_brian2()
        from brian2.devices.device import reset_device, set_device

        toolchain.quiet_known_warnings()
        old_target = b2.prefs.codegen.target
        if self.codegen_target is not None:
            b2.prefs.codegen.target = self.codegen_target
        set_device("runtime")
        try:
            yield
        finally:
            b2.prefs.codegen.target = old_target
            reset_device()

    def clock(self, dt_ms: float):
        import brian2 as b2

        return b2.Clock(dt=dt_ms * b2.ms, name="ttfs_clock")

    def build(self, network, run_ms: float) -> float:
        network.store("initial")
        return 0.0

    def discard(self) -> None:
        """Nothing to forget: a runtime network is built anew in the same device."""

    def run(self, built, t_in_ms: np.ndarray, period_ms: float, assignments=(), tables=None,
            release_keys=None) -> None:
        """One round: the stored initial state, then this chunk's inputs, per-trial values and draws."""
        import brian2 as b2

        with self.activate():
            built.network.restore("initial")
            built.input_group.t_in = t_in_ms.reshape(-1) * b2.ms
            for obj, name, value in assignments:
                setattr(obj, name, value)
            for layer, (eps, lost) in (tables or {}).items():
                built.groups[layer].eps = eps.reshape(-1)
                built.groups[layer].lost = np.asarray(lost).reshape(-1) > 0.5
            if release_keys is not None:  # one round: the replicas are the samples
                for group in built.groups.values():
                    if "release_key" in group.variables:
                        group.release_key = np.repeat(release_keys, group.N // len(release_keys))
            built.network.run(period_ms * b2.ms, namespace={})


class StandaloneAdapter:
    """``cpp_standalone``: one compiled project per simulator in its own directory, with a private device (so
    that several simulators and the runtime device coexist in one process), rerun for every chunk."""

    name = "cpp_standalone"
    multiplexed = True

    def __init__(self, threads: int | None = None, build_dir: Path | None = None, **_: Any):
        self.threads = threads
        self.build_dir = build_dir
        self.cached_objects: list[str] = []
        """Names of the compiled files the last build took from :mod:`~ttfs_brian.brian.compile_cache`."""
        self._device = None

    def _factory(self):
        from brian2.devices.cpp_standalone.device import CPPStandaloneDevice

        return CPPStandaloneDevice

    def _prepare(self) -> None:
        """Preferences the device needs before code generation."""

    @contextlib.contextmanager
    def activate(self) -> Iterator[Any]:
        b2 = toolchain.import_brian2()
        from brian2.devices.device import reset_device, set_device

        toolchain.quiet_known_warnings()
        factory = self._factory()
        self._prepare()
        if self._device is None:
            toolchain.check_tools(self.name)
            self._device = factory()
        old_threads = b2.prefs.devices.cpp_standalone.openmp_threads
        if self.threads is not None:
            b2.prefs.devices.cpp_standalone.openmp_threads = self.threads
        set_device(self._device, build_on_run=False)
        try:
            with toolchain.names_as_in_a_fresh_process():
                yield self._device
        finally:
            b2.prefs.devices.cpp_standalone.openmp_threads = old_threads
            reset_device()

    def clock(self, dt_ms: float):
        import brian2 as b2

        return b2.Clock(dt=dt_ms * b2.ms, name="ttfs_clock")

    def discard(self) -> None:
        """Forget the built network: a device builds one network, so a rebuild needs a fresh device."""
        self._device = None

    def build(self, network, run_ms: float) -> float:
        """Record the run, then generate and compile the project; returns the compile time (s)."""
        import brian2 as b2

        # run_args before the run's initialisation code: a synapse's spike queue reads its delays there (set after
        # it, per-run delays would change the lags but not when spikes are delivered)
        self._device.apply_run_args()
        network.run(run_ms * b2.ms, namespace={})
        cleanup = None
        if self.build_dir is None:
            # a project we chose the place of is ours to delete (hundreds of MB each: a sweep filled /tmp)
            self.build_dir = Path(tempfile.mkdtemp(prefix="ttfs_brian_standalone_"))
            cleanup = weakref.finalize(self, shutil.rmtree, self.build_dir, ignore_errors=True)
        self.build_dir = Path(self.build_dir)
        started = time.perf_counter()
        try:
            self._compile()
        except RuntimeError as exc:
            if cleanup is not None:
                cleanup.detach()  # the error names the project: it stays to be inspected
            raise ToolchainError(f"building the {self.name} project in {self.build_dir} failed ({exc}); check the "
                                 "C++ toolchain, or use device='runtime'") from exc
        return time.perf_counter() - started

    def _compile(self) -> None:
        makefile = self.build_dir / "makefile"
        before = (makefile.read_text(), makefile.stat()) if makefile.exists() else None
        self._device.build(directory=str(self.build_dir), compile=False, run=False, with_output=False)
        toolchain.patch_makefile(makefile, hot_parts=min(8, max(2, os.cpu_count() or 1)))
        if before is not None and makefile.read_text() == before[0]:
            # unchanged: keep its time stamp, so that make rebuilds only changed sources
            os.utime(makefile, ns=(before[1].st_atime_ns, before[1].st_mtime_ns))
        root = cache_dir()
        cache = None if root is None else ObjectCache(self.build_dir, root)
        if cache is not None:
            self.cached_objects = cache.restore()
        self._device.compile_source(str(self.build_dir), None, False, False)
        if cache is not None:
            cache.store()

    def run(self, built, t_in_ms: np.ndarray, period_ms: float, assignments=(), tables=None,
            release_keys=None) -> None:
        """One run of the binary: inputs, per-trial values and per-round tables through ``run_args``."""
        import brian2 as b2

        rounds = built.layout.rounds

        def rows(values, fill):  # round k holds samples k R .. k R + R - 1; round K, after them, is silent
            values = np.asarray(values).reshape(rounds, -1)
            return np.concatenate([values, np.full((1, values.shape[1]), fill, dtype=values.dtype)])

        run_args = {built.table: rows(t_in_ms, NEVER_MS) * b2.ms}
        run_args.update({_run_arg(obj, name): value for obj, name, value in assignments})
        for layer, (eps, lost) in (tables or {}).items():
            eps_table, lost_table = built.tables[layer]
            run_args[eps_table] = rows(np.asarray(eps / b2.ms), 0.0) * b2.ms
            run_args[lost_table] = rows(lost, 0.0)
        if release_keys is not None:
            run_args[built.release_table] = rows(np.asarray(release_keys, dtype=np.float64), 0.0)
        self._device.run(directory=str(self.build_dir), with_output=False, run_args=run_args)
        for name in list(self._device.run_args_arrays):  # the input table file is never needed again
            with contextlib.suppress(OSError):
                os.remove(self.build_dir / "static_arrays" / name)


def _run_arg(obj, name: str):
    """The ``run_args`` key of ``obj.name``. A synapse's ``delay`` is its pathway's variable, which the binary knows
    under the synapses' name (``syn.delay`` would name the pathway, which the binary refuses)."""
    if name == "delay" and hasattr(obj, "pre"):
        return obj.pre.variables["delay"].get_addressable_value_with_unit("delay", obj)
    return getattr(obj, name)


class CudaAdapter(StandaloneAdapter):
    """brian2cuda's ``cuda_standalone`` (Python >= 3.12): built without a GPU where none is visible."""

    name = "cuda_standalone"

    def __init__(self, compute_capability: float | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.compute_capability = compute_capability

    def _factory(self):
        try:
            import brian2cuda  # noqa: F401
            from brian2cuda.device import CUDAStandaloneDevice
        except ImportError as exc:
            raise ToolchainError(
                "device='cuda_standalone' needs brian2cuda (pip install brian2cuda==1.0b1), which pins "
                "brian2==2.10.1 and therefore Python >= 3.12: run it from a separate environment, or use "
                "device='cpp_standalone' or device='runtime'") from exc
        return CUDAStandaloneDevice

    def _prepare(self) -> None:
        toolchain.configure_cuda(self.compute_capability)

    def clock(self, dt_ms: float):
        import brian2 as b2

        # brian2cuda's synaptic pathway code refers to ``defaultclock`` by name
        b2.defaultclock.dt = dt_ms * b2.ms
        return b2.defaultclock

    def _compile(self) -> None:
        self._device.build(directory=str(self.build_dir), compile=True, run=False, with_output=False)


_ADAPTERS = {"runtime": RuntimeAdapter, "cpp_standalone": StandaloneAdapter, "cuda_standalone": CudaAdapter}


def adapter(device: str, **options: Any):
    """The adapter of ``device`` (``runtime``: ``codegen_target``; standalone: ``threads``, ``build_dir``;
    CUDA: ``compute_capability``)."""
    if device not in _ADAPTERS:
        raise InputError(f"unknown device {device!r}; choose one of {DEVICES}")
    if device == "runtime" and (options.get("threads") is not None or options.get("compute_capability") is not None):
        raise InputError("threads (OpenMP) and compute_capability need a standalone device, not device='runtime'")
    if device != "runtime" and options.get("codegen_target") is not None:
        raise InputError("codegen_target applies to device='runtime' only")
    return _ADAPTERS[device](**options)
