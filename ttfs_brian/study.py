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
from .perturb import KINDS, TIME_CONSTANTS, Perturbation, as_list
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
BIOPHYSICAL_KINDS: dict[str, dict[str, Any]] = {
    "synaptic_tau": {"levels": (100.0, 30.0, 10.0, 3.0, 1.0)},
    "conductance": {"levels": (0.03, 0.1, 0.2, 0.4, 0.7)},
    "delay_mismatch": {"levels": (0.1, 0.2, 0.4, 0.8, 1.6), "latency_ms": 0.2},
    "release_failure": {"levels": (0.003, 0.01, 0.03, 0.1, 0.3)},
    "leak": {"levels": (1000.0, 300.0, 100.0, 30.0, 10.0)},
}
"""The biophysical grid (issue #21): synaptic time constants and leaks from far above to below the windows (ms),
conductances up to a threshold 70 % of the way to the excitatory reversal potential, delay mismatch on the study's
0.2 ms grid (latency 0.2 ms), release failures up to 30 %."""
ANALYTIC_ONLY = ("conductance",)
"""Kinds without a Brian2 twin (:func:`ttfs_brian.brian.structure.structure_for` says why): no Brian2 cells."""
TIME_KINDS = ("spike_jitter", "input_jitter")
"""Kinds whose level is a time (ms); the others are relative (mismatch) or a margin (zeta)."""

COLUMNS = ["model", "dataset", "variant", "engine", "kind", "level", "trial", "shard", "samples", "start", "options",
           "dt", "classes", "accuracy", "nominal_accuracy", "agreement", "outcomes", "flagged", "spikes_per_neuron",
           "dropped", "mean_abs_dt_ms", "max_abs_dt_ms", "level_ms",
           "level_rel_min", "level_rel_max", "layers", "twin_compared", "twin_flagged_compared", "twin_max_abs_dt_ms",
           "twin_unmatched_spikes", "twin_disagreements", "twin_flag_mismatches", "wall_s"]
"""``twin_*`` (Brian2 cells): against the analytic engine given the same perturbation and samples, on the samples
where Brian2's step-end threshold test can time every crossing (``twin_compared``, of which
``twin_flagged_compared`` flagged: :func:`ttfs_brian.events.inputs_in_crossing_step`), the worst spike-time
difference, the spikes present in one engine only, the samples whose class differs and those whose flags differ."""
KEY = ["model", "dataset", "variant", "engine", "kind", "level", "trial", "shard", "samples", "start", "options", "dt"]
"""Everything a row depends on: a rerun with another latency, ``dt`` or sharding must not reuse it."""
REQUIRED = ["outcomes"]
"""A row without them (written before per-sample outcomes existed) is recomputed: the report's intervals need them."""

OUTCOME_BITS = {"agree": 1, "nominal_correct": 2, "correct": 4, "twin_correct": 8}
"""Column ``outcomes``: one hexadecimal digit per sample, the sum of these bits: the prediction agrees with the
unperturbed network's; the unperturbed network is correct; the perturbed one is; and the analytic engine under the same
draws is (for an analytic cell, the cell itself). Paired statistics (:mod:`ttfs_brian.intervals`) need them."""


def encode_outcomes(**flags: np.ndarray) -> str:
    """Per-sample booleans named as :data:`OUTCOME_BITS` -> the ``outcomes`` string."""
    code = sum(OUTCOME_BITS[name] * np.asarray(mask, dtype=np.int64) for name, mask in flags.items())
    return "".join("0123456789abcdef"[c] for c in np.atleast_1d(code))


def decode_outcomes(text: str) -> dict[str, np.ndarray]:
    """The ``outcomes`` string -> per-sample booleans named as :data:`OUTCOME_BITS`."""
    code = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)
    code = np.where(code >= ord("a"), code - ord("a") + 10, code - ord("0"))
    return {name: (code & bit) > 0 for name, bit in OUTCOME_BITS.items()}


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
        options = {k: v for k, v in self.options if k != COMPENSATE}
        return Perturbation(self.kind, self.level, seed=self.trial, **options)

    @property
    def compensated(self) -> bool:
        """Whether the network is converted with thresholds compensated for this cell's kind and level
        (:mod:`ttfs_brian.compensation`; kind option ``compensate = true``)."""
        return bool(dict(self.options).get(COMPENSATE, False))


COMPENSATE = "compensate"
"""The kind option that converts every level's network with :func:`ttfs_brian.compensation.compensate`."""
COMPENSATION_SAMPLES = 500
"""Calibration samples the compensation averages over."""


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
    breaking_points: list[str] = field(default_factory=list)
    """Engines whose breaking points are searched after the grid (:mod:`ttfs_brian.search`); empty: the grid only."""
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
        if isinstance(self.breaking_points, bool):  # TOML's `breaking_points = true`: the analytic engine
            self.breaking_points = ["analytic"] if self.breaking_points else []
        for engine in self.breaking_points:
            if engine not in self.engines:
                raise InputError(f"breaking_points names engine {engine!r}, which the study does not run ({self.engines})")
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
            if options.get(COMPENSATE) is not None:
                from .compensation import COMPENSABLE

                if not isinstance(options[COMPENSATE], bool) or kind not in COMPENSABLE:
                    raise InputError(f"[kinds.{kind}] compensate must be true or false, and only {list(COMPENSABLE)} "
                                     "can be compensated")
            options.pop(COMPENSATE, None)
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
            for engine in self.engines:
                # a shard's cells one after the other: a worker's cached unperturbed result serves them all
                for variant in self.variants:
                    for shard in range(len(self.shards(model, engine, test_sizes))):
                        for kind, spec in self.kinds.items():
                            if engine == "brian2" and kind in ANALYTIC_ONLY:
                                continue
                            for level in spec["levels"]:
                                out += self.level_cells(model, engine, variant, kind, float(level), test_sizes,
                                                        shards=[shard])
        return out

    def shards(self, model: str, engine: str, test_sizes: dict[str, int] | None = None) -> list[tuple[int, int]]:
        """``(shard, samples)`` of one model and engine."""
        available = test_sizes[model] if test_sizes else self.test_size(model)
        total = available if self.samples is None else min(self.samples, available)
        if engine == "brian2":
            total = min(total, self.brian_samples)
        return [(s, min(self.shard, total - s * self.shard)) for s in range(math.ceil(total / self.shard))]

    def trials_of(self, engine: str, kind: str) -> int:
        """Trials (seeds) of a kind's level for one engine: one for a kind that draws nothing."""
        if not is_random(kind):
            return 1
        return min(self.trials, self.brian_trials or self.trials) if engine == "brian2" else self.trials

    def level_cells(self, model: str, engine: str, variant: str, kind: str, level: float,
                    test_sizes: dict[str, int] | None = None, shards: Sequence[int] | None = None) -> list[Cell]:
        """The cells of one level: every trial of every shard (or of ``shards``)."""
        arch, dataset, source = self.resolve(model)
        options = tuple(sorted((k, v) for k, v in self.kinds[kind].items() if k != "levels"))
        every = self.shards(model, engine, test_sizes)
        return [Cell(arch, dataset, variant, engine, kind, float(level), trial, shard, size, shard * self.shard,
                     options, self.dt, source)
                for shard, size in (every if shards is None else [every[s] for s in shards])
                for trial in range(self.trials_of(engine, kind))]


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
def _network(arch: str, dataset: str, source: UserModel | None, variant: str, zeta: float, dt: float,
             compensated_for: tuple | None = None):
    """The converted network (``compensated_for``: ``(kind, level, options)`` of a perturbation it is compensated
    for, :mod:`ttfs_brian.compensation`)."""
    from .converter import convert

    model, calibration, _, _ = _model(arch, dataset, source)
    if compensated_for is not None:
        from .compensation import compensate

        kind, level, options = compensated_for
        return compensate(_network(arch, dataset, source, variant, zeta, dt), calibration[:COMPENSATION_SAMPLES],
                          Perturbation(kind, level, **dict(options)))
    return convert(model, calibration, variant=variant, zeta=zeta, dt=dt)


def _nominal(cell: Cell):
    """The unperturbed spikes the cell is compared with: its kind at level 0, which is no perturbation at all
    except for a spike jitter's latency (whose windows are later by design). Cells of other kinds share it."""
    options = tuple((k, v) for k, v in cell.options if k != COMPENSATE)
    zero = None if cell.kind == "zeta" else Perturbation(cell.kind, math.inf if cell.kind in TIME_CONSTANTS else 0.0,
                                                          **dict(options))
    reference = None if zero is None or zero.is_identity else (cell.kind, options)
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
    perturbation = cell.perturbation()
    compensated_for = (cell.kind, cell.level, tuple(sorted(perturbation.options.items()))) if cell.compensated else None
    net = _network(cell.model, cell.dataset, cell.source, cell.variant, zeta, cell.dt, compensated_for)
    nominal = _nominal(cell)
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
    return {**cell.key, **measure(net, nominal, result, y, cell, twin), **checks, "wall_s": time.perf_counter() - started}


def hidden_rows(net, table: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`~ttfs_brian.comparison.compare` for the spiking layers past the input."""
    return table[table["layer"].map(lambda name: name in net.layers and net.layers[name].kind != "input")]


def measure(net, nominal, result, labels: np.ndarray, cell: Cell, twin=None) -> dict[str, Any]:
    """The row of a cell: accuracy, agreement with the unperturbed network, per-sample outcomes (``twin``: the
    analytic engine under the same draws, default ``result``), flags, spike-time shifts per layer."""
    layers = {}
    for shift in hidden_rows(net, compare(nominal, result)).itertuples(index=False):
        layer = net.layers[shift.layer]
        window = layer.t_max - layer.t_min
        layers[shift.layer] = {"mean_abs_dt_ms": shift.mean_abs_dt_ms, "max_abs_dt_ms": shift.max_abs_dt_ms,
                               "window_ms": window,
                               "level_rel": cell.level / window if cell.kind in TIME_KINDS else cell.level}
    report = result.report[result.report["kind"] != "input"]
    rel = [v["level_rel"] for v in layers.values()] or [cell.level]
    twin = result if twin is None else twin
    outcomes = encode_outcomes(agree=result.predictions == nominal.predictions, nominal_correct=nominal.predictions == labels,
                               correct=result.predictions == labels, twin_correct=twin.predictions == labels)
    return {
        "classes": int(result.logits.shape[1]),
        "outcomes": outcomes,
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
    """Run every missing cell of ``study`` on Dask and append its row to ``out`` (CSV) as it finishes; then, for the
    engines of ``study.breaking_points``, search the breaking points (:mod:`ttfs_brian.search`) round by round,
    each round's new levels on the same cluster and into the same rows (so a rerun resumes the search too)."""
    store = RowStore(out, COLUMNS, KEY, REQUIRED)
    cells = study.cells()
    todo = [c for c in cells if not store.has(c.key)]
    log.info("study: %d cells, %d already in %s, %d to run", len(cells), len(cells) - len(todo), out, len(todo))
    with _Cluster(scheduler, workers, retries) as cluster:
        cluster.run(todo, store, "study cells")
        if study.breaking_points:
            _search(study, store, cluster)
    return store.read()


def _search(study: Study, store: RowStore, cluster: "_Cluster") -> None:
    """The breaking-point rounds (:mod:`ttfs_brian.search`): each proposes levels from the rows stored so far, so a
    rerun replays the same proposals from its rows and computes only what is missing (a level an interrupted
    round left incomplete is completed before anything new is proposed)."""
    from . import search

    sizes = {model: study.test_size(model) for model in study.models}
    names = {study.resolve(model)[:2]: model for model in study.models}
    for step in range(1, search.MAX_ROUNDS + 1):
        rows = store.read()
        present = {((names[(r.model, r.dataset)], r.engine, r.variant, r.kind), float(r.level))
                   for r in rows.itertuples() if (r.model, r.dataset) in names and r.engine in study.breaking_points
                   and r.variant in study.variants and r.kind in study.kinds}
        missing = [c for group, level in sorted(present) for c in study.level_cells(*group, level, sizes)
                   if not store.has(c.key)]
        if missing:
            log.info("breaking points: completing %d cells of interrupted levels", len(missing))
            cluster.run(missing, store, "search: completing levels")
            rows = store.read()
        levels = search.proposals(study, rows)
        if not levels:
            return
        cells = [c for group, level in levels for c in study.level_cells(*group, level, sizes)]
        log.info("breaking points, round %d: %d levels, %d cells", step, len(levels), len(cells))
        cluster.run([c for c in cells if not store.has(c.key)], store, f"search round {step}")
    log.warning("the breaking-point search stopped after %d rounds with targets still open", search.MAX_ROUNDS)


class _Cluster:
    """A Dask client, started on the first cells to run (a study with nothing left to compute starts none)."""

    def __init__(self, scheduler: str | None, workers: int, retries: int):
        self.scheduler, self.workers, self.retries = scheduler, workers, retries
        self.client = self.cluster = None

    def __enter__(self) -> "_Cluster":
        return self

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0")
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(self.scheduler, timeout="20s")
            except (OSError, ValueError, TimeoutError) as exc:
                raise InputError(f"cannot reach the Dask scheduler {self.scheduler!r}: {exc}. Start one (`dask "
                                 f"scheduler`, then `dask worker {self.scheduler}`) or leave out --scheduler for a "
                                 "local cluster") from None
        log.info("Dask dashboard: %s", self.client.dashboard_link)
        self.client.register_plugin(_WorkerHeap())

    def run(self, cells: list[Cell], store: RowStore, what: str) -> None:
        """Every cell on the cluster, each row appended to ``store`` as soon as its task finishes."""
        from distributed import as_completed
        from tqdm import tqdm

        if not cells:
            return
        if self.client is None:
            self._start()
        futures = self.client.map(run_cell, cells, retries=self.retries, pure=False)
        with tqdm(total=len(futures), desc=what, unit="cell") as progress:
            for future in as_completed(futures):
                store.append(future.result())
                progress.update()

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def write_report(rows: pd.DataFrame, out_dir: str | Path, commands: Sequence[str] = (),
                 searched: Sequence[str] | None = None) -> Path:
    """Summary, figures and README of a study's rows (see :mod:`ttfs_brian.robustness`); ``commands``: those that
    reproduced it, listed in the README; ``searched``: the engines whose breaking points were searched (default:
    every engine)."""
    from .robustness import write_summary

    return write_summary(rows, Path(out_dir), commands=list(commands), searched=searched)
