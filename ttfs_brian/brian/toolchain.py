"""Workarounds for the tools under Brian2, applied when a device is activated (never at import).

- :func:`patch_makefile`: a cheaper ``make`` for ``cpp_standalone`` (precompiled headers, lower
  optimisation for set-up code), with the same binary as a result;
- :func:`configure_cuda`: brian2cuda preferences so that ``cuda_standalone`` code builds without a GPU;
- :func:`quiet_known_warnings`: two Brian2 log warnings that do not apply to the networks built here;
- :func:`check_tools`: a clear error when make, the C++ compiler or nvcc is missing.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import ToolchainError

log = logging.getLogger(__name__)


class _PoolOrderFilter(logging.Filter):
    """Drop Brian2's "order of execution" warning for the pool synapses only.

    Their code counts inputs and takes the min/max of the input spike times, which are commutative,
    so the order in which synapses onto the same pooled neuron run cannot change the outcome.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "n_in_post += 1" not in record.getMessage()


class _TableGridFilter(logging.Filter):
    """Drop Brian2's "time grids not aligned" warning for the input table.

    Its ``dt`` is the round length ``P``, a multiple of the simulation ``dt`` that floating point
    division may not recover exactly; the table lookup rounds ``t / P`` to the nearest row (with a
    margin of a fraction of ``dt``), so every round start reads its own row.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "time grids not aligned" not in record.getMessage()


_FILTERS = {"brian2.codegen.generators.base": _PoolOrderFilter(), "brian2.input.timedarray": _TableGridFilter()}


def quiet_known_warnings() -> None:
    """Attach the two filters above to Brian2's loggers (once)."""
    for name, flt in _FILTERS.items():
        logger = logging.getLogger(name)
        if flt not in logger.filters:
            logger.addFilter(flt)


def check_tools(device: str) -> None:
    """A standalone build needs make and a C++ compiler (and nvcc for CUDA); say so before Brian2 fails obscurely."""
    import brian2 as b2

    tools = [b2.prefs.devices.cpp_standalone.make_cmd_unix.split()[0], os.environ.get("CXX", "g++").split()[0]]
    if device == "cuda_standalone":
        tools.append("nvcc")
    for tool in tools:
        if shutil.which(tool) is None:
            raise ToolchainError(
                f"device={device!r} needs the build tool '{tool}', which is not on PATH; install it "
                "(e.g. apt-get install build-essential) or use device='runtime'")


def import_brian2():
    """Brian2, imported from any thread. Its ``__init__`` installs a SIGINT handler, which Python allows only
    in the main thread; a Dask worker runs its tasks in other threads, so there the handler is skipped."""
    if "brian2" in sys.modules or threading.current_thread() is threading.main_thread():
        import brian2

        return brian2
    install = signal.signal
    signal.signal = lambda signum, handler: signal.getsignal(signum)
    try:
        import brian2
    finally:
        signal.signal = install
    return brian2


@contextlib.contextmanager
def names_as_in_a_fresh_process() -> Iterator[None]:
    """Brian2 makes a wildcard name (``layer_1_stateupdater_codeobject*``, ``layer_1_round_clock*``) unique
    against every live Brian2 object of the process, so a second simulator of the same network in one
    process generated ``..._codeobject_1``: other sources, nothing taken from the compile cache. Within this
    context only the objects created inside it take names; each simulator has its own device, which
    checks its own names for clashes."""
    import importlib

    from brian2.core import names

    # the modules, not the ``device`` proxy that brian2.devices exports under the same name
    users = [importlib.import_module(m) for m in ("brian2.core.names", "brian2.devices.device", "brian2.groups.group")]
    original = names.find_name
    existing = list(names.Nameable.__instances__())  # held, so that their ids stay theirs
    taken_before = {id(ref) for ref in existing}

    def find_name(name: str, taken=None) -> str:
        if taken is None and name.endswith("*"):
            taken = {obj.name for obj in (ref() for ref in names.Nameable.__instances__() if id(ref) not in taken_before)
                     if obj is not None and hasattr(obj, "name")}
        return original(name, taken)

    for module in users:
        module.find_name = find_name
    try:
        yield
    finally:
        for module in users:
            module.find_name = original


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
    target = root / "lib" / "libcurand.so.10"
    # one folder per wheel: a link left by another (or a deleted) environment is never reused
    links = Path(tempfile.gettempdir()) / "ttfs_brian_curand" / hashlib.sha256(str(target).encode()).hexdigest()[:16]
    links.mkdir(parents=True, exist_ok=True)
    link = links / "libcurand.so"
    if not (link.is_symlink() and link.resolve() == target.resolve()):
        staged = links / f".libcurand.so.{os.getpid()}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(target)
        os.replace(staged, link)  # atomic, also over a stale or dangling link
    cpp = b2.prefs.codegen.cpp
    for key, folder in (("include_dirs", root / "include"), ("library_dirs", links),
                        ("runtime_library_dirs", root / "lib")):
        if str(folder) not in getattr(cpp, key):
            setattr(cpp, key, [*getattr(cpp, key), str(folder)])



PCH_HEADER = "ttfs_pch_{level}.h"
PCH_LEVELS = ("O3", "O1")
PCH_INCLUDES = ('"objects.h"', '"synapses_classes.h"', '"brianlib/common_math.h"', '"brianlib/stdint_compat.h"',
                "<cmath>", "<ctime>", "<iostream>", "<fstream>", "<climits>")
"""What every generated code object includes (Brian2 2.9): one precompiled header instead of ~65 000
preprocessed lines parsed again for each of the ~90 code objects."""


def patch_makefile(path: Path) -> None:
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
      monitors, round starts, spike queues, ``main.cpp``) with ``-O1`` (another 1.4 s less for LeNet-5). The hot ones
      (``-O3``) are the state updaters and leaky steps, the thresholders and the synaptic pathways
      (``<target>__from__<source>_pre_codeobject``).
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
        "$(findstring _pre_codeobject,$o),$(findstring _stateupdater_codeobject,$o),"
        "$(findstring _thresholder_codeobject,$o),$(findstring _step_codeobject,$o)),$o))",
        "SETUP_OBJS = $(filter-out objects.o $(HOT_OBJS),$(OBJS))",
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
