"""Robustness studies: a grid of perturbed simulations, run on Dask, resumable, aggregated and plotted.

A study is model x variant x engine x kind x level x trial (seed) x shard of test samples; each
:class:`Cell` is one Dask task (``dask.distributed``: a ``LocalCluster`` by default, or an existing
scheduler) whose row the client appends to a CSV as soon as the task finishes
(:class:`~ttfs_brian.store.RowStore`, keyed by the cell), so a rerun computes only the missing cells,
a killed client resumes with no cell lost or repeated, and Dask retries the tasks of a killed worker.
Every perturbation draw depends only on (seed, kind, sample index) (:mod:`ttfs_brian.perturb`), so
shards, workers and engines see the same noise. Workers keep converted networks and Brian2 simulators
per process: one compiled binary per network and structure, whatever the level or seed.

``kind = "zeta"`` is the window margin: a conversion parameter, so its cells reconvert. It and the
deterministic kinds of :data:`~ttfs_brian.perturb.KINDS` draw nothing, so they get one trial: repeating them
would compute the same row sixteen times.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from distributed.diagnostics.plugin import WorkerPlugin

from .comparison import compare
from .errors import InputError
from .perturb import KINDS, Perturbation, as_list
from .store import RowStore
from .validation import finite

log = logging.getLogger(__name__)

JITTER_LEVELS = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.03, 0.05)
REFERENCE_KINDS: dict[str, dict[str, Any]] = {
    "spike_jitter": {"levels": JITTER_LEVELS, "latency_ms": 0.2},
    "input_jitter": {"levels": JITTER_LEVELS},
    "alpha_mismatch": {"levels": (5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3)},
    "zeta": {"levels": (-0.7, -0.6, -0.5, -0.4, -0.3, 0.0, 0.5)},
}
"""The reference grid of SPEC section 8 (IBM's reference code: 16 trials each). Spike jitter gets a latency
of 0.2 ms, four times its largest sigma, so that the truncation at ``-D`` keeps it Gaussian and causal."""
TIME_KINDS = ("spike_jitter", "input_jitter")
"""Kinds whose level is a time (ms); the others are relative (mismatch) or a margin (zeta)."""

COLUMNS = ["model", "dataset", "variant", "engine", "kind", "level", "trial", "shard", "samples", "start", "options",
           "dt", "accuracy",
           "nominal_accuracy", "agreement", "flagged", "spikes_per_neuron", "dropped", "mean_abs_dt_ms", "max_abs_dt_ms", "level_ms",
           "level_rel_min", "level_rel_max", "layers", "twin_compared", "twin_flagged_compared", "twin_max_abs_dt_ms",
           "twin_unmatched_spikes", "twin_disagreements", "twin_flag_mismatches", "wall_s"]
"""``twin_*`` (Brian2 cells): against the analytic engine given the same perturbation and samples, on the samples
where Brian2's step-end threshold test can time every crossing (``twin_compared``, of which
``twin_flagged_compared`` flagged: :func:`ttfs_brian.events.inputs_in_crossing_step`), the worst spike-time
difference, the spikes present in one engine only, the samples whose class differs and those whose flags differ."""
KEY = ["model", "dataset", "variant", "engine", "kind", "level", "trial", "shard", "samples", "start", "options", "dt"]
"""Everything a row depends on: a rerun with another latency, ``dt`` or sharding must not reuse it."""


@dataclass(frozen=True)
class UserModel:
    """A network of the user's in a study (a ``[models.NAME]`` table): ``model``, a ``torch.save``'d module file
    (or ``zoo:ARCH_DATASET``); ``calibration``, the ``.npy`` inputs its windows come from; ``inputs`` and
    ``labels``, the ``.npy`` test samples ``(N, ...)`` and their classes ``(N,)``. Workers read the files, so
    on a cluster they must be on a file system every worker sees."""

    model: str
    calibration: str
    inputs: str
    labels: str

    def load(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        """The module, the calibration inputs, the test inputs and their labels, checked against each other."""
        from .files import load_array, load_model

        model = load_model(self.model)
        calibration = load_array(self.calibration, "calibration")
        x, y = load_array(self.inputs, "inputs"), load_array(self.labels, "labels")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"labels {self.labels} must be {len(x)} integer classes, one per sample of {self.inputs}, "
                             f"got {y.dtype} of shape {y.shape}")
        if x.shape[1:] != calibration.shape[1:]:
            raise InputError(f"inputs {self.inputs} have samples of shape {x.shape[1:]}, the calibration "
                             f"{self.calibration} {calibration.shape[1:]}; they must match")
        return model, calibration, x, y


@dataclass(frozen=True)
class Cell:
    """One task: test samples ``start .. start + samples`` (shard ``shard``) of one model, variant, engine,
    kind and level, with the perturbation's seed ``trial``."""

    model: str
    dataset: str
    variant: str
    engine: str
    kind: str
    level: float
    trial: int
    shard: int
    samples: int
    start: int = 0
    options: tuple = ()
    dt: float = 0.2
    source: UserModel | None = None

    @property
    def key(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in KEY if k != "options"},
                "options": json.dumps(dict(self.options), sort_keys=True)}

    def perturbation(self) -> Perturbation | None:
        if self.kind == "zeta":
            return None
        return Perturbation(self.kind, self.level, seed=self.trial, **dict(self.options))


@dataclass
class Study:
    """The grid (see the module docstring); :meth:`from_toml` reads it from a file."""

    models: list[str] = field(default_factory=lambda: ["lenet5_mnist5k"])
    variants: list[str] = field(default_factory=lambda: ["exact", "sparse"])
    engines: list[str] = field(default_factory=lambda: ["analytic"])
    kinds: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(REFERENCE_KINDS))
    trials: int = 16
    samples: int | None = None  # analytic test samples (None: the whole test split)
    brian_samples: int = 20
    brian_trials: int | None = 4
    shard: int = 1000
    dt: float = 0.2
    user_models: dict[str, UserModel] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Study":
        """A study from a TOML file: a ``[study]`` table of the fields above, ``[kinds.<kind>]`` tables with
        ``levels`` and the kind's options (e.g. ``latency_ms``), and ``[models.<name>]`` tables of the user's
        networks (:class:`UserModel`; paths relative to the file), which are the study's models unless
        ``[study] models`` names them."""
        try:
            document = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"cannot read the study file {path}: {exc}") from None
        fields = set(cls.__dataclass_fields__) - {"kinds", "user_models"}
        unknown = set(document) - {"study", "kinds", "models"} | set(document.get("study", {})) - fields
        if unknown:
            raise InputError(f"the study file {path} has unknown entries {sorted(unknown)}; it takes a [study] table "
                             f"of {sorted(fields)}, [kinds.<kind>] and [models.<name>] tables")
        study = cls(**document.get("study", {}))
        if "kinds" in document:
            study.kinds = document["kinds"]
        for name, spec in document.get("models", {}).items():
            wanted = set(UserModel.__dataclass_fields__)
            if not isinstance(spec, dict) or set(spec) != wanted:
                given = sorted(spec) if isinstance(spec, dict) else spec
                raise InputError(f"[models.{name}] in {path} needs exactly {sorted(wanted)}, got {given}")
            here = Path(path).resolve().parent
            study.user_models[name] = UserModel(**{k: v if str(v).startswith("zoo:") else str(here / v)
                                                   for k, v in spec.items()})
        if study.user_models and "models" not in document.get("study", {}):
            study.models = list(study.user_models)
        study.check()
        return study

    def resolve(self, model: str) -> tuple[str, str, UserModel | None]:
        """A model of the study as (architecture or name, dataset, the user's files or ``None`` for the zoo)."""
        if model in self.user_models:
            return model, Path(self.user_models[model].inputs).stem, self.user_models[model]
        return (*split_model(model), None)

    def check(self) -> None:
        """Every field valid, every model's checkpoint present and every level one its kind accepts, so that a
        wrong study fails here, before a cluster starts."""
        from .zoo import checkpoint_path

        for name in ("trials", "shard", "brian_samples"):
            _count(getattr(self, name), name, low=1)
        for name in ("samples", "brian_trials"):
            if getattr(self, name) is not None:
                _count(getattr(self, name), name, low=1)
        finite(self.dt, "dt (ms)", low=0.0, low_open=True)
        for name, allowed in (("variants", ("exact", "sparse")), ("engines", ("analytic", "brian2"))):
            for value in getattr(self, name):
                if value not in allowed:
                    raise InputError(f"unknown {name[:-1]} {value!r} in the study; choose from {list(allowed)}")
        for model in self.models:
            arch, dataset, source = self.resolve(model)
            if source is not None:
                _model(arch, dataset, source)  # reads and checks the files (and keeps them for a local worker)
            elif not checkpoint_path(arch, dataset).exists():
                raise InputError(f"no checkpoint for model {model!r} ({checkpoint_path(arch, dataset)}); train it "
                                 f"with `ttfs-brian train {arch} --data {dataset}`")
        for kind, spec in self.kinds.items():
            if kind != "zeta" and kind not in KINDS:
                raise InputError(f"unknown kind {kind!r} in the study; choose from {sorted(KINDS) + ['zeta']}")
            if not isinstance(spec, dict) or not spec.get("levels"):
                given = sorted(spec) if isinstance(spec, dict) else spec
                raise InputError(f"kind {kind!r} of the study has no levels (given: {given}); write "
                                 f"[kinds.{kind}] levels = [...]")
            options = {k: v for k, v in spec.items() if k != "levels"}
            for level in spec["levels"]:
                if kind == "zeta":
                    finite(level, "zeta (window margin)", low=-1.0, low_open=True)
                    if options:
                        raise InputError(f"kind 'zeta' takes no options, got {sorted(options)}")
                else:
                    Perturbation(kind, level, **options)  # raises on a level or option the kind does not accept

    def test_size(self, model: str) -> int:
        """Test samples of one of the study's models."""
        return len(_model(*self.resolve(model))[2])

    def cells(self, test_sizes: dict[str, int] | None = None) -> list[Cell]:
        """Every cell of the grid (``test_sizes``: test samples of each model, default :meth:`test_size`)."""
        self.check()
        out = []
        for model in self.models:
            arch, dataset, source = self.resolve(model)
            available = test_sizes[model] if test_sizes else self.test_size(model)
            for engine in self.engines:
                total = available if self.samples is None else min(self.samples, available)
                trials = self.trials
                if engine == "brian2":
                    total = min(total, self.brian_samples)
                    trials = min(trials, self.brian_trials or trials)
                shards = [(s, min(self.shard, total - s * self.shard)) for s in range(math.ceil(total / self.shard))]
                # a shard's cells one after the other: a worker's cached unperturbed result serves them all
                for variant in self.variants:
                    for shard, size in shards:
                        for kind, spec in self.kinds.items():
                            options = tuple(sorted((k, v) for k, v in spec.items() if k != "levels"))
                            for level in spec["levels"]:
                                for trial in range(trials if is_random(kind) else 1):
                                    out.append(Cell(arch, dataset, variant, engine, kind, float(level), trial, shard,
                                                    size, shard * self.shard, options, self.dt, source))
        return out


def _count(value: Any, name: str, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"the study's {name} must be an integer >= {low}, got {value!r}")


def is_random(kind: str) -> bool:
    """Whether a kind draws anything, i.e. whether its trials (seeds) differ."""
    return kind != "zeta" and KINDS[kind] != "deterministic"


def split_model(model: str) -> tuple[str, str]:
    """``lenet5_mnist5k`` -> ``("lenet5", "mnist5k")``."""
    arch, _, dataset = model.rpartition("_")
    if not arch:
        raise InputError(f"models are named ARCH_DATASET (e.g. lenet5_mnist5k), got {model!r}")
    return arch, dataset


# --------------------------------------------------------------------------- one cell (on a worker)
@functools.lru_cache(maxsize=8)
def _model(arch: str, dataset: str, source: UserModel | None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The module, its calibration inputs (the zoo's: the training split), the test inputs and labels."""
    from . import data, zoo

    if source is not None:
        return source.load()
    model, _ = zoo.load_pretrained(arch, dataset)
    ds = data.load_dataset(dataset)
    return model, ds.x_train, ds.x_test, ds.y_test


@functools.lru_cache(maxsize=16)
def _network(arch: str, dataset: str, source: UserModel | None, variant: str, zeta: float, dt: float):
    from .converter import convert

    model, calibration, _, _ = _model(arch, dataset, source)
    return convert(model, calibration, variant=variant, zeta=zeta, dt=dt)


def _nominal(cell: Cell):
    """The unperturbed spikes the cell is compared with: its kind at level 0, which is no perturbation at all
    except for a spike jitter's latency (whose windows are later by design). Cells of other kinds share it."""
    zero = None if cell.kind == "zeta" else Perturbation(cell.kind, math.inf if cell.kind == "leak" else 0.0,
                                                          **dict(cell.options))
    reference = None if zero is None or zero.is_identity else (cell.kind, cell.options)
    return _nominal_spikes(cell.model, cell.dataset, cell.source, cell.variant, cell.dt, cell.start, cell.samples,
                           reference)


@functools.lru_cache(maxsize=4)  # a VGG-small result of 1000 samples holds 375 MB; cells come shard by shard
def _nominal_spikes(arch: str, dataset: str, source: UserModel | None, variant: str, dt: float, start: int,
                    size: int, reference: tuple[str, tuple] | None):
    from .analytic import simulate_analytic

    x_test = _model(arch, dataset, source)[2]
    zero = None if reference is None else Perturbation(reference[0], 0.0, **dict(reference[1]))
    return simulate_analytic(_network(arch, dataset, source, variant, 0.5, dt), x_test[start:start + size],
                             perturbation=zero)


_SIMULATORS: OrderedDict[tuple, Any] = OrderedDict()
SIMULATORS_KEPT = 2
"""Brian2 simulators a worker keeps, the most recently used: each holds its network's synapses (ResNet-8: GBs
for 20 samples) and its project on disk, and a worker that kept all of a study's (every kind, every zeta)
grew past Dask's pause threshold and stalled the sweep. Cells of one kind run together, so two suffice."""


def _simulator(cell: Cell, net, perturbation: Perturbation | None):
    """One Brian2 simulator per (network, kind) in this process: compiled once, rerun at every level and seed."""
    from .brian import Simulator

    key = (cell.model, cell.dataset, cell.source, cell.variant, cell.kind, cell.level if cell.kind == "zeta" else None,
           cell.options, cell.dt)
    if key not in _SIMULATORS:
        while len(_SIMULATORS) >= SIMULATORS_KEPT:
            _SIMULATORS.popitem(last=False)  # its memory and its project directory go with it
        hint = [] if perturbation is None else [replace(perturbation, level=perturbation.level or 1e-3)]
        # serial code (no OpenMP: one core per worker), which also spares every sweep Brian2's OpenMP warning
        _SIMULATORS[key] = Simulator(net, device="cpp_standalone", timing="precise", dt=cell.dt, perturbations=hint)
    _SIMULATORS.move_to_end(key)
    return _SIMULATORS[key]


def run_cell(cell: Cell) -> dict[str, Any]:
    """Simulate one cell and measure it against the unperturbed network (analytic, same samples)."""
    import time

    import torch

    from .analytic import simulate_analytic
    from .events import inputs_in_crossing_step

    torch.set_num_threads(1)  # one core per Dask worker
    started = time.perf_counter()
    _, _, x_test, y_test = _model(cell.model, cell.dataset, cell.source)
    start = cell.start
    x, y = x_test[start:start + cell.samples], y_test[start:start + cell.samples]
    indices = np.arange(start, start + cell.samples)
    zeta = cell.level if cell.kind == "zeta" else 0.5
    net = _network(cell.model, cell.dataset, cell.source, cell.variant, zeta, cell.dt)
    nominal = _nominal(cell)
    perturbation = cell.perturbation()
    twin = simulate_analytic(net, x, perturbation=perturbation, indices=indices)
    if cell.engine == "analytic":
        result, checks = twin, {}
    else:
        result = _simulator(cell, net, perturbation).run(x, perturbation=perturbation, indices=indices)
        # Brian2 reproduces every crossing that no input follows within its step, flagged or not; the others
        # (an exact neuron firing while its inputs still arrive) it times differently (brian/equations.py)
        clean = inputs_in_crossing_step(net, twin, as_list(perturbation), indices, cell.dt) == 0
        shifts = hidden_rows(net, compare(twin, result, samples=clean))
        checks = {"twin_compared": int(clean.sum()), "twin_flagged_compared": int((clean & twin.flagged).sum()),
                  "twin_max_abs_dt_ms": float(shifts["max_abs_dt_ms"].max()) if len(shifts) else 0.0,
                  "twin_unmatched_spikes": int((shifts["spikes_only_a"] + shifts["spikes_only_b"]).sum()),
                  "twin_disagreements": int((twin.predictions != result.predictions)[clean].sum()),
                  "twin_flag_mismatches": int((twin.flagged != result.flagged)[clean].sum())}
    return {**cell.key, **measure(net, nominal, result, y, cell), **checks, "wall_s": time.perf_counter() - started}


def hidden_rows(net, table: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`~ttfs_brian.comparison.compare` for the spiking layers past the input."""
    return table[table["layer"].map(lambda name: name in net.layers and net.layers[name].kind != "input")]


def measure(net, nominal, result, labels: np.ndarray, cell: Cell) -> dict[str, Any]:
    """The row of a cell: accuracy, agreement with the unperturbed network, flags, spike-time shifts per layer."""
    layers = {}
    for shift in hidden_rows(net, compare(nominal, result)).itertuples(index=False):
        layer = net.layers[shift.layer]
        window = layer.t_max - layer.t_min
        layers[shift.layer] = {"mean_abs_dt_ms": shift.mean_abs_dt_ms, "max_abs_dt_ms": shift.max_abs_dt_ms,
                               "window_ms": window,
                               "level_rel": cell.level / window if cell.kind in TIME_KINDS else cell.level}
    report = result.report[result.report["kind"] != "input"]
    rel = [v["level_rel"] for v in layers.values()] or [cell.level]
    return {
        "accuracy": float((result.predictions == labels).mean()),
        "nominal_accuracy": float((nominal.predictions == labels).mean()),
        "agreement": float((result.predictions == nominal.predictions).mean()),
        "flagged": int(result.flagged.sum()),
        "spikes_per_neuron": float(report["spikes"].sum() / max(1, report["neurons"].sum() * len(labels))),
        "dropped": int(result.report["dropped"].sum()),
        "mean_abs_dt_ms": float(np.mean([v["mean_abs_dt_ms"] for v in layers.values()] or [0.0])),
        "max_abs_dt_ms": float(max([v["max_abs_dt_ms"] for v in layers.values()] or [0.0])),
        "level_ms": cell.level if cell.kind in TIME_KINDS else np.nan,
        "level_rel_min": float(min(rel)), "level_rel_max": float(max(rel)),
        "layers": json.dumps(layers),
    }


# --------------------------------------------------------------------------- the workers' heap
def tune_worker_heap() -> bool:
    """Let glibc keep freed memory in this process (``True`` if it could: glibc only).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches off glibc's
    adaptive mmap threshold, so every chunk-sized tensor of a cell (MBs) was a fresh ``mmap`` and page faults
    on every write: a LeNet-5 cell took 4.5 s in a worker against 1.5 s outside. A fixed 32 MiB mmap
    threshold and a 256 MiB trim threshold bring it to 1.15 s."""
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(libc.mallopt(m_trim_threshold, 256 << 20)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))


class _WorkerHeap(WorkerPlugin):
    """A Dask worker plugin: :func:`tune_worker_heap` in every worker, also those of an existing cluster."""

    name = "ttfs-brian-heap"

    def setup(self, worker) -> None:
        tuned = tune_worker_heap()
        log.debug("worker %s: heap thresholds %s", worker.address, "set" if tuned else "left (not glibc)")


# --------------------------------------------------------------------------- the client
def run_study(study: Study, out: str | Path, *, scheduler: str | None = None, workers: int = 2,
              retries: int = 3) -> pd.DataFrame:
    """Run every missing cell of ``study`` on Dask and append its row to ``out`` (CSV) as it finishes."""
    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    cells = study.cells()
    store = RowStore(out, COLUMNS, KEY)
    todo = [c for c in cells if not store.has(c.key)]
    log.info("study: %d cells, %d already in %s, %d to run", len(cells), len(cells) - len(todo), out, len(todo))
    if not todo:
        return store.read()
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, ValueError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}. Start one (`dask scheduler`, then "
                             f"`dask worker {scheduler}`) or leave out --scheduler for a local cluster") from None
    try:
        log.info("Dask dashboard: %s", client.dashboard_link)
        client.register_plugin(_WorkerHeap())
        futures = client.map(run_cell, todo, retries=retries, pure=False)
        with tqdm(total=len(futures), desc="study cells", unit="cell") as progress:
            for future in as_completed(futures):
                store.append(future.result())
                progress.update()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return store.read()


def write_report(rows: pd.DataFrame, out_dir: str | Path, commands: Sequence[str] = ()) -> Path:
    """Summary, figures and README of a study's rows (see :mod:`ttfs_brian.robustness`); ``commands``: those that
    reproduced it, listed in the README."""
    from .robustness import write_summary

    return write_summary(rows, Path(out_dir), commands=list(commands))
