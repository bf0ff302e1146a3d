"""Workarounds for the tools under Brian2, applied when a device is activated (never at import).

- :func:`patch_makefile`: a cheaper ``make`` for ``cpp_standalone`` (the code objects compiled as a few
  translation units, lower optimisation for set-up code), with the same simulation code as a result;
- :func:`configure_cuda`: brian2cuda preferences so that ``cuda_standalone`` code builds without a GPU;
- :func:`quiet_known_warnings`: two Brian2 log warnings that do not apply to the networks built here;
- :func:`check_tools`: a clear error when make, the C++ compiler or nvcc is missing.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import re
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
        return "n_in_post +=" not in record.getMessage()


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
    9.0) and ``gpu_id`` 0 are set, and the host code is compiled for any x86-64-v2 CPU, not this one's
    extensions (the binary runs elsewhere). Loop-invariant hoisting is off (see below). nvcc gets ``-std=c++17``
    (Brian2's headers need it). When the ``nvidia-curand`` wheel is installed, its ``curand.h`` goes on the include
    path and a private folder with a ``libcurand.so`` link to the wheel's ``libcurand.so.10`` on the library path.
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
    # Brian2 runs `make -j` unbounded: one nvcc per code object at once, about 1 GB each (Thrust templates)
    b2.prefs.devices.cpp_standalone.extra_make_args_unix = [f"-j{os.cpu_count() or 1}"]
    gcc_flags = [f for f in b2.prefs.codegen.cpp.extra_compile_args_gcc if not f.startswith("-std=")] + ["-std=c++17"]
    if backend.detect_gpus is False and platform.machine() == "x86_64":
        # built where no GPU is visible, the binary runs on another machine, whose CPU may lack this one's extensions
        gcc_flags = [f for f in gcc_flags if not f.startswith("-march=")] + ["-march=x86-64-v2"]
    b2.prefs.codegen.cpp.extra_compile_args_gcc = gcc_flags
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



HOT_CODE = re.compile(r"_pre_codeobject|_stateupdater_codeobject|_thresholder_codeobject|_step_codeobject")
"""Code objects that loop over all neurons or synapses every step: compiled with ``-O3``. The others (set-up,
resets, monitors, round starts, spike queues, ``after_run_*``) run rarely or over few elements: ``-O1``."""
ROUND_CODE = re.compile(r"_round_resetter_codeobject|_round_clock_codeobject")
"""Round starts: the only code objects that read the per-round tables, whose period Brian2 writes into the code
as a literal; in a unit of their own, a network with other windows recompiles only that one."""
SETUP_SOURCES = ("network.cpp", "run.cpp")
"""Brian2's own sources that go into the set-up translation unit with the set-up code objects (not ``main.cpp``:
it holds the network's values, such as the round clock's period, which would change the unit's cache key)."""
UNITY = "ttfs_unity_{part}.cpp"


def write_unity_sources(project: Path, hot_parts: int) -> list[str]:
    """Write the code objects of a generated project as a few translation units; returns their object names.

    Every Brian2 code object is a small ``.cpp`` file that includes the same ~65 000 lines of headers:
    parsing them (or loading them as a 47 MB precompiled header) was 0.2 of the 0.25 s each of LeNet-5's
    84 code objects took to compile. Here the hot code objects are spread over ``hot_parts`` files
    (balanced by size, one per core), the round starts (:data:`ROUND_CODE`) into one file and everything
    else into one set-up file, so the headers are read once per file. Each code object keeps its own
    scope: its text is pasted inside a namespace of its own (its helpers live in an anonymous namespace
    that would clash with the next object's), its headers are included once at the top (their include
    guards make the pasted ``#include`` lines no-ops), and the functions its header declares are defined
    globally as calls into that namespace. A file is rewritten
    only when its text changes, so that ``make`` in a reused build directory recompiles only what changed.
    """
    sources = sorted((project / "code_objects").glob("*.cpp"))
    hot = [s for s in sources if HOT_CODE.search(s.name) and not s.name.startswith("after_run_")]
    bins: list[list[Path]] = [[] for _ in range(max(1, hot_parts))]
    sizes = [0] * len(bins)
    for source in sorted(hot, key=lambda s: (-s.stat().st_size, s.name)):  # largest first, onto the lightest
        k = sizes.index(min(sizes))
        bins[k].append(source)
        sizes[k] += source.stat().st_size
    units = {f"hot{k}": sorted(members) for k, members in enumerate(bins) if members}
    units["rounds"] = [s for s in sources if ROUND_CODE.search(s.name)]
    units["setup"] = [s for s in sources if s not in hot and s not in units["rounds"]]
    written = []
    for part, members in units.items():
        includes, bodies, calls = [], [], []
        for n, source in enumerate(members):
            text = source.read_text()
            includes += [line for line in text.splitlines() if line.startswith("#include")]
            scope = f"_ttfs_object_{n}"
            bodies.append(f"namespace {scope} {{\n{text}\n}}  // namespace {scope}")
            header = source.with_suffix(".h").read_text()
            calls += [f"void {name}() {{ {scope}::{name}(); }}" for name in re.findall(r"^void (\w+)\(\);", header, re.M)]
        if part == "setup":
            bodies += [(project / name).read_text() for name in SETUP_SOURCES]
        content = "\n".join(["// generated by ttfs_brian.brian.toolchain.write_unity_sources", *dict.fromkeys(includes),
                             *bodies, *calls]) + "\n"
        path = project / UNITY.format(part=part)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
        written.append(path.with_suffix(".o").name)
    return written


def patch_makefile(path: Path, hot_parts: int = 2) -> None:
    """Make Brian2's generated makefile cheaper to run, with the same simulation code as a result.

    Measured on LeNet-5 (84 code objects, 2 cores): ``make`` from 34 s (Brian2's makefile) to ~4 s.

    - The code objects are compiled as a few translation units (:func:`write_unity_sources`), and
      ``network.cpp`` and ``run.cpp`` with the set-up ones.
    - Header dependencies come from ``-MMD`` during compilation instead of one serial ``g++ -MM``
      pass over all sources before it (several seconds for a LeNet-sized project).
    - ``objects.cpp`` (array allocation, file I/O and the ``run_args`` parser: several thousand lines,
      no simulation code) and ``main.cpp`` (calls in order) are compiled with ``-O0`` instead of ``-O3``
      (objects: 1.4 s instead of 7.3 s), the set-up unit with ``-O1`` and the hot units with Brian2's ``-O3``.
    Without the expected lines (another Brian2 version) the makefile is left as it is.
    """
    text = path.read_text()
    rule = "make.deps: $(SRCS) $(H_SRCS)\n\t$(CXX) $(CXXFLAGS) -MM $(SRCS) > make.deps"
    include = "ifneq ($(wildcard $(DEPS)), )\ninclude $(DEPS)\nendif"
    objects = "OBJS := ${OBJS:.c=.o}\n"
    compile_rule = "%.o : %.cpp makefile\n\t$(CXX) $(CXXFLAGS) $< -o $@"
    if any(line not in text for line in (rule, include, objects, compile_rule, "\nCXXFLAGS = ")):
        log.debug("unexpected makefile layout; not patched")
        return
    units = write_unity_sources(path.parent, hot_parts)
    absorbed = " ".join(name.replace(".cpp", ".o") for name in SETUP_SOURCES)
    text = text.replace(rule, "make.deps:\n\ttouch make.deps")
    text = text.replace(objects, objects + f"OBJS := $(filter-out code_objects/% {absorbed},$(OBJS)) {' '.join(units)}\n")
    text = text.replace(include, "\n".join([
        "-include $(OBJS:.o=.d)",
        "LEVEL = $(if $(filter objects.o main.o,$@),O0,$(if $(filter ttfs_unity_hot%,$@),O3,O1))",
    ]))
    text = text.replace(compile_rule, "%.o : %.cpp makefile\n\t$(CXX) $(CXXFLAGS) -$(LEVEL) $< -o $@")
    text = text.replace("\nCXXFLAGS = ", "\nCXXFLAGS = -MMD -MP ", 1)
    path.write_text(text)
