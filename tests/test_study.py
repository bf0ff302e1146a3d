"""Robustness studies on Dask (issue #8): a real scheduler and workers, a worker and the client killed mid-sweep."""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ttfs_brian.errors import InputError
from ttfs_brian.robustness import aggregate
from ttfs_brian.store import RowStore
from ttfs_brian.study import COLUMNS, KEY, Cell, Study, _nominal, run_cell, run_study, write_report

DASK = Path(sys.executable).parent / "dask"
STUDY = """
[study]
models = ["digits_net_digits"]
variants = ["exact", "sparse"]
engines = ["analytic"]
trials = 3
samples = 120
shard = 40

[kinds.spike_jitter]
levels = [0.001, 0.05]
latency_ms = 0.2

[kinds.zeta]
levels = [-0.5, 0.5]
"""
CELLS = 2 * (2 * 3 + 2 * 1) * 3  # variants x (jitter levels x trials + zeta levels x one trial) x shards


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(*args, log: Path) -> subprocess.Popen:
    with open(log, "w") as handle:  # the child keeps its own descriptor
        return subprocess.Popen([str(a) for a in args], stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def rows_in(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def sweep(study: Path, out: Path, scheduler: str, log: Path) -> subprocess.Popen:
    return spawn(sys.executable, "-m", "ttfs_brian.cli", "-v", "sweep", study, "-o", out, "--scheduler", scheduler,
                 "--no-report", log=log)


def assert_every_cell_once(rows_csv: Path) -> pd.DataFrame:
    rows = pd.read_csv(rows_csv)
    assert len(rows) == CELLS, len(rows)
    assert not rows.duplicated(KEY).any()
    assert (rows["row_complete"] == 1).all()
    return rows


@pytest.fixture
def cluster(tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = spawn(DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard",
                      log=tmp_path / "scheduler.log")
    workers = [spawn(DASK, "worker", address, "--nthreads", 1, "--no-dashboard", "--memory-limit", "4GB",
                     "--name", f"w{k}", log=tmp_path / f"worker{k}.log") for k in range(2)]
    try:
        from distributed import Client

        wait_for(lambda: scheduler.poll() is None and "Scheduler at" in (tmp_path / "scheduler.log").read_text(),
                 60, "scheduler start")
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, workers
    finally:
        for process in [*workers, scheduler]:
            kill(process)


def test_killed_worker_loses_no_cell(cluster, tmp_path):
    address, workers = cluster
    (tmp_path / "study.toml").write_text(STUDY)
    out = tmp_path / "out"
    client = sweep(tmp_path / "study.toml", out, address, tmp_path / "sweep.log")
    try:
        wait_for(lambda: rows_in(out / "rows.csv") >= 3, 300, "first rows")
        kill(workers[0])  # mid-sweep: its tasks are rescheduled on the other worker
        assert client.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        kill(client)
    rows = assert_every_cell_once(out / "rows.csv")
    assert set(rows["kind"]) == {"spike_jitter", "zeta"}


def test_killed_client_resumes_without_repeating(cluster, tmp_path):
    address, _ = cluster
    (tmp_path / "study.toml").write_text(STUDY)
    out = tmp_path / "out"
    first = sweep(tmp_path / "study.toml", out, address, tmp_path / "first.log")
    try:
        wait_for(lambda: rows_in(out / "rows.csv") >= 5, 300, "first rows")
    finally:
        kill(first)  # the client dies; rows already written stay
    done = rows_in(out / "rows.csv")
    assert 5 <= done < CELLS
    second = sweep(tmp_path / "study.toml", out, address, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert_every_cell_once(out / "rows.csv")
    resumed = re.search(r"(\d+) already in .*, (\d+) to run", (tmp_path / "second.log").read_text())
    assert resumed and int(resumed.group(1)) >= 5 and int(resumed.group(1)) + int(resumed.group(2)) == CELLS


def test_study_grid_toml_and_local_cluster(tmp_path):
    (tmp_path / "study.toml").write_text(STUDY)
    study = Study.from_toml(tmp_path / "study.toml")
    cells = study.cells({"digits_net_digits": 500})
    assert len(cells) == CELLS
    assert {c.trial for c in cells if c.kind == "zeta"} == {0}  # a conversion parameter draws nothing
    assert {c.trial for c in cells if c.kind == "spike_jitter"} == {0, 1, 2}
    by_variant = [[c.shard for c in cells if c.variant == v] for v in ("exact", "sparse")]
    assert all(shards == sorted(shards) for shards in by_variant)  # shard by shard: the nominal result is reused
    study.kinds = {"drop": {"levels": [0.1]}}
    study.trials, study.samples, study.shard = 2, 60, 60
    rows = run_study(study, tmp_path / "rows.csv", workers=1)
    assert len(rows) == 2 * 2 and (rows["dropped"] > 0).all()
    again = run_study(study, tmp_path / "rows.csv", workers=1)  # nothing left to run
    assert again.equals(rows)
    readme = write_report(rows, tmp_path)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 2 and (summary["trials"] == 2).all()  # two variants, two trials each
    assert (tmp_path / "robustness_digits_net.png").stat().st_size > 10_000
    assert "loses 1% accuracy" in readme.read_text() and "drop" in readme.read_text()


@pytest.mark.parametrize("text, message", [
    ('[study]\nmodel = ["lenet5_mnist5k"]\n', r"unknown entries \['model'\]"),
    ('[study]\nmodels = ["lenet9_mnist5k"]\n', "no checkpoint for model 'lenet9_mnist5k'"),
    ('[study]\ntrials = "4"\n', "trials must be an integer >= 1, got '4'"),
    ('[study]\nengines = ["brian"]\n', "unknown engine 'brian'"),
    ('[kinds.spike_jitter]\nlevels = [-0.01]\n', "level must be a finite number >= 0"),
    ('[kinds.spike_jitter]\nlevel = [0.01]\n', r"has no levels \(given: \['level'\]\)"),
    ('[kinds.spike_jitter]\nlevels = [0.01]\nlatency = 0.2\n', r"no options \['latency'\]; it takes \['latency_ms'\]"),
    ('[kinds.zeta]\nlevels = [-1.5]\n', "zeta"),
    ('[kinds.noise]\nlevels = [0.1]\n', "unknown kind 'noise'"),
    ("[study\n", "cannot read the study file"),
])
def test_a_wrong_study_file_is_refused_before_any_cluster_starts(tmp_path, text, message):
    (tmp_path / "study.toml").write_text(text)
    with pytest.raises(InputError, match=message):
        Study.from_toml(tmp_path / "study.toml")


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    study = Study(models=["digits_net_digits"], trials=1, kinds={"drop": {"levels": [0.1]}})
    with pytest.raises(InputError, match="cannot reach the Dask scheduler 'nonsense'.*local cluster"):
        run_study(study, tmp_path / "rows.csv", scheduler="nonsense")
    assert not (tmp_path / "rows.csv").exists() or rows_in(tmp_path / "rows.csv") == 0


def test_cells_whose_kind_is_no_perturbation_at_level_0_share_one_nominal_result():
    """A worker keeps the unperturbed spikes per reference (VGG-small: 375 MB per 1000 images), not per kind."""
    def cell(kind, options=()):
        return Cell("digits_net", "digits", "exact", "analytic", kind, 0.01, 0, 0, 30, options=options)

    plain = _nominal(cell("input_jitter"))
    assert _nominal(cell("alpha_mismatch")) is plain and _nominal(cell("drop")) is plain
    late = _nominal(cell("spike_jitter", (("latency_ms", 0.2),)))  # every later window 0.2 ms later per layer
    assert late is not plain and (late.predictions == plain.predictions).all()
    last = list(plain.spike_times)[-1]
    assert np.nanmin(late.spike_times[last] - plain.spike_times[last]) > 0.2


def test_a_row_is_reused_only_by_the_same_cell(tmp_path):
    """Another latency, time step or sharding of the same (kind, level, trial) is another cell."""
    def cells(latency=0.2, dt=0.2, shard=40):
        study = Study(models=["digits_net_digits"], variants=["exact"], trials=1, samples=90, shard=shard, dt=dt,
                      kinds={"spike_jitter": {"levels": [0.01], "latency_ms": latency}})
        return study.cells({"digits_net_digits": 500})

    store = RowStore(tmp_path / "rows.csv", COLUMNS, KEY)
    for cell in cells():
        store.append({**cell.key, "accuracy": 1.0})
    assert all(store.has(cell.key) for cell in cells())
    assert RowStore(tmp_path / "rows.csv", COLUMNS, KEY).has(cells()[-1].key)  # read back from the file
    assert not any(store.has(cell.key) for cell in cells(latency=0.5) + cells(dt=0.1))
    # shards (0, 40), (1, 40), (2, 10) against (0, 50), (1, 40): shard 1 has 40 samples in both, from 40 and 50
    assert [store.has(cell.key) for cell in cells(shard=50)] == [False, False]


def test_an_old_rows_file_without_the_key_columns_is_refused(tmp_path):
    (tmp_path / "rows.csv").write_text("model,dataset,variant,engine,kind,level,trial,shard,samples,accuracy,"
                                       "row_complete\nlenet5,mnist5k,exact,analytic,drop,0.1,0,0,1000,0.98,1\n")
    with pytest.raises(InputError, match=r"no columns \['start', 'options', 'dt'\].*new file"):
        RowStore(tmp_path / "rows.csv", COLUMNS, KEY).has({k: 0 for k in KEY})


def synthetic_row(**values) -> dict:
    """A row as a cell writes it, with every sample correct unless ``outcomes`` says otherwise."""
    samples = values.get("samples", 10)
    row = {"model": "m", "dataset": "d", "variant": "exact", "engine": "analytic", "kind": "spike_jitter",
           "level": 0.01, "samples": samples, "flagged": 0, "classes": 10, "max_abs_dt_ms": 0.0, "mean_abs_dt_ms": 0.0,
           "level_rel_min": 0.1, "level_rel_max": 0.1, "dt": 0.2, "start": 0, "trial": 0, "shard": 0,
           "options": '{"latency_ms": 0.2}', "layers": '{"h": {"window_ms": 1.0}}'}
    row.update(values)
    row.setdefault("outcomes", "f" * samples)  # correct, nominally correct, agreeing, and so is the analytic twin
    return row


def test_the_report_refuses_to_average_cells_of_different_settings():
    same = pd.DataFrame([synthetic_row(trial=t) for t in (0, 1)])
    assert aggregate(same)["trials"].tolist() == [2]
    mixed = same.assign(options=['{"latency_ms": 0.2}', '{"latency_ms": 0.5}'])
    with pytest.raises(InputError, match="several kind options or time steps.*own output folder"):
        aggregate(mixed)
    # two shards of each trial: 20 samples, the second shard half lost (nominally correct, now wrong: bits 2 + 8)
    shards = pd.concat([same, same.assign(start=10, outcomes="aaaaaffff" + "f")])
    summary = aggregate(shards)
    assert summary[["trials", "samples"]].values.tolist() == [[2, 20]]
    assert summary["accuracy"].iloc[0] == pytest.approx(0.75) and summary["loss"].iloc[0] == pytest.approx(0.25)
    overlapping = pd.concat([same, same.assign(samples=30, outcomes="f" * 30)])  # a study of 10, another of 30
    with pytest.raises(InputError, match="overlapping samples.*own output folder"):
        aggregate(overlapping)


def test_rows_without_per_sample_outcomes_are_recomputed(tmp_path):
    """Rows of an older ttfs_brian have no outcomes: the report's intervals need them, so they are dropped (with a
    warning) and the study computes them again; the report refuses such rows outright."""
    from ttfs_brian.study import REQUIRED

    old = {**synthetic_row(), "outcomes": None}
    pd.DataFrame([{**old, "row_complete": 1}]).reindex(columns=COLUMNS + ["row_complete"]).to_csv(
        tmp_path / "rows.csv", index=False)
    store = RowStore(tmp_path / "rows.csv", COLUMNS, KEY, REQUIRED)
    assert not store.has(old) and store.read().empty
    with pytest.raises(InputError, match="lack per-sample outcomes.*rerun the study"):
        aggregate(pd.DataFrame([old]))


def test_the_breaking_point_search_runs_resumes_and_reports(tmp_path):
    """SPEC's jitter levels on the digits network: the search closes both targets of both kinds to a factor 1.25,
    and a rerun after a lost round computes exactly the lost cells and no others."""
    study = Study(models=["digits_net_digits"], variants=["sparse"], trials=2, samples=100, shard=100,
                  kinds={"spike_jitter": {"levels": [0.01, 0.1], "latency_ms": 0.2}, "zeta": {"levels": [-0.5]}},
                  breaking_points=["analytic"])
    rows = run_study(study, tmp_path / "rows.csv", workers=1)
    readme = write_report(rows, tmp_path)
    points = pd.read_csv(tmp_path / "breaking_points.csv")
    assert len(points) == 4 and (points["status"] == "found").all(), points
    jitter = points[(points["kind"] == "spike_jitter") & (points["target"] == "loss_1pct")].iloc[0]
    assert jitter["below"] < jitter["above"] <= 1.25 * jitter["below"] * 1.001 and jitter["above"] > 0.1
    assert "## Breaking points" in readme.read_text() and (tmp_path / "robustness_relative.png").exists()
    assert len(rows) > 2 * 2 + 2  # the grid's cells and the search's
    # the last round lost, and half of the one before: the rerun recomputes those 4 cells and nothing else
    lines = (tmp_path / "rows.csv").read_text().splitlines()
    (tmp_path / "rows.csv").write_text("\n".join(lines[:-4]) + "\n")
    again = run_study(study, tmp_path / "rows.csv", workers=1)
    assert rows_in(tmp_path / "rows.csv") == len(again) == len(rows)  # 4 appended, none twice
    assert set(map(tuple, again[KEY].astype(str).values)) == set(map(tuple, rows[KEY].astype(str).values))
    write_report(again, tmp_path)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "breaking_points.csv"), points)
    # an incomplete level (one trial of two) of a variant this study leaves out is not this study's to complete
    stored = pd.read_csv(tmp_path / "rows.csv")
    jittered = stored[stored["kind"] == "spike_jitter"].iloc[[-1]]
    jittered.assign(variant="exact", trial=0).to_csv(tmp_path / "rows.csv", mode="a", header=False, index=False)
    run_study(study, tmp_path / "rows.csv", workers=1)
    assert rows_in(tmp_path / "rows.csv") == len(stored) + 1


def write_user_model(folder: Path) -> float:
    """A network the zoo does not have, saved as a user would, with its data; returns its float64 accuracy."""
    import torch
    import torch.nn as nn
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x, y = load_digits(return_X_y=True)
    x = (x / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    with torch.no_grad():  # a few steps of least squares on the last layer: better than chance, not perfect
        hidden = model[:3](torch.from_numpy(x[:1000]))
        target = torch.nn.functional.one_hot(torch.from_numpy(y[:1000]), 10).double()
        weight = torch.linalg.lstsq(hidden.double(), target).solution
        model[3].weight.copy_(weight.T.float())
        model[3].bias.zero_()
        logits = model.double()(torch.from_numpy(x[1000:1060]).double())
    model.float()
    torch.save(model, folder / "mine.pt")
    np.save(folder / "calibration.npy", x[:1000])
    np.save(folder / "test_x.npy", x[1000:1060])
    np.save(folder / "test_y.npy", y[1000:1060])
    return float((logits.argmax(1).numpy() == y[1000:1060]).mean())


def test_a_study_of_the_users_own_network_from_a_toml_file(tmp_path, caplog):
    from ttfs_brian.cli import main

    accuracy = write_user_model(tmp_path)
    (tmp_path / "study.toml").write_text(
        '[study]\ntrials = 2\nshard = 30\n[kinds.input_jitter]\nlevels = [0.01]\n'
        '[models.mine]\nmodel = "mine.pt"\ncalibration = "calibration.npy"\ninputs = "test_x.npy"\n'
        'labels = "test_y.npy"\n')
    command = ["sweep", str(tmp_path / "study.toml"), "-o", str(tmp_path / "out"), "--workers", "1"]
    assert main(command) == 0
    assert re.search(r"Dask dashboard: http://\S+", caplog.text)  # logged without -v
    readme = (tmp_path / "out" / "README.md").read_text()  # says which study it holds, and how it was run
    assert "mine (test_x): analytic on 60 test samples, 2 trials per level" in readme
    assert "input_jitter (0.01 ms)" in readme and "reference" not in readme and "lenet5" not in readme.lower()
    assert shlex.join(["ttfs-brian", *command]) in readme
    rows = pd.read_csv(tmp_path / "out" / "rows.csv")
    assert len(rows) == 2 * 2 * 2 and set(rows["model"]) == {"mine"} and set(rows["dataset"]) == {"test_x"}
    assert sorted(set(rows["start"])) == [0, 30] and (rows["flagged"] == 0).all()
    per_trial = rows.groupby(["variant", "trial"]).apply(lambda g: (g["nominal_accuracy"] * g["samples"]).sum() / 60)
    assert np.allclose(per_trial, accuracy) and 0.3 < accuracy < 1  # the unperturbed SNN is the ReLU network


def test_a_users_labels_that_do_not_match_the_inputs_are_refused(tmp_path):
    write_user_model(tmp_path)
    np.save(tmp_path / "test_y.npy", np.zeros(59, dtype=np.int64))
    (tmp_path / "study.toml").write_text(
        '[models.mine]\nmodel = "mine.pt"\ncalibration = "calibration.npy"\ninputs = "test_x.npy"\n'
        'labels = "test_y.npy"\n')
    with pytest.raises(InputError, match="must be 60 integer classes"):
        Study.from_toml(tmp_path / "study.toml")
    (tmp_path / "study.toml").write_text('[models.mine]\nmodel = "mine.pt"\n')
    with pytest.raises(InputError, match=r"needs exactly \['calibration', 'inputs', 'labels', 'model'\]"):
        Study.from_toml(tmp_path / "study.toml")


def test_brian2_builds_in_a_worker_thread():
    """A Dask worker runs cells in threads; the first Brian2 import there failed (its SIGINT handler)."""
    script = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "import numpy as np, torch, torch.nn as nn, ttfs_brian\n"
        "from ttfs_brian.brian import Simulator\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()\n"
        "x = np.random.default_rng(0).random((5, 4)).astype(np.float32)\n"
        "net = ttfs_brian.convert(model, x, dt=0.05)\n"
        "run = lambda: Simulator(net, dt=0.05, codegen_target='numpy').run(x)\n"
        "res = ThreadPoolExecutor(1).submit(run).result()\n"
        "print(ttfs_brian.compare(ttfs_brian.simulate(net, x), res)['max_abs_dt_ms'].iloc[:-1].max())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-9


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_worker_heap_tuning_stops_the_page_faults_of_dasks_trim_threshold():
    """Dask's workers run with MALLOC_TRIM_THRESHOLD_=65536, which made every MB-sized temporary a fresh mmap."""
    script = (
        "import resource, sys, numpy as np\n"
        "from ttfs_brian.study import tune_worker_heap\n"
        "def faults():\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(200):\n"
        "        np.ones(1 << 19)  # 4 MiB, written\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
        "untuned = faults()\n"
        "assert tune_worker_heap()\n"
        "faults()  # the heap grows once\n"
        "print(untuned, faults())\n")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    untuned, tuned = map(int, out.stdout.split())
    assert untuned > 100 * 1024  # 200 arrays x 1024 pages, each faulted in afresh
    assert tuned < untuned / 20


def test_a_brian2_cell_is_checked_against_the_analytic_engine_draw_for_draw(tmp_path):
    cell = Cell("digits_net", "digits", "exact", "brian2", "spike_jitter", 0.02, 3, 0, 6, start=10,
                options=(("latency_ms", 0.2),))
    row = run_cell(cell)
    assert row["twin_max_abs_dt_ms"] <= 1e-9
    assert row["twin_unmatched_spikes"] == 0 and row["twin_disagreements"] == 0 and row["twin_flag_mismatches"] == 0
    assert row["max_abs_dt_ms"] > 1e-3  # the jitter did move spikes: the twin saw the same draws, not none
    readme = write_report(pd.DataFrame([row]), tmp_path).read_text()
    assert row["twin_compared"] == 6  # no crossing followed by an input within its step: every sample compared
    assert "draw for draw" in readme and re.search(r"\| digits_net\s+\| exact\s+\|\s+1\s+\|", readme)


def test_a_worker_compiles_once_per_structure_and_keeps_only_its_latest_simulators():
    """Brian2 cells of one kind share a binary whatever the level or seed; the simulator used least recently is
    let go, and its project directory with it (a worker that kept them all outgrew Dask's memory limits)."""
    import gc

    from ttfs_brian import study

    def kept():
        return [sim.build_dir for sim in study._SIMULATORS.values()]

    study._SIMULATORS.clear()
    try:
        jitter = Cell("digits_net", "digits", "exact", "brian2", "spike_jitter", 0.02, 0, 0, 3,
                      options=(("latency_ms", 0.2),))
        rows = [run_cell(c) for c in (jitter, replace(jitter, level=0.001, trial=5), replace(jitter, start=7))]
        assert len(study._SIMULATORS) == 1 and all(r["twin_max_abs_dt_ms"] <= 1e-9 for r in rows)
        (first,) = study._SIMULATORS.values()
        run_cell(replace(jitter, kind="input_jitter", level=0.01, options=()))
        second = kept()[1]
        run_cell(replace(jitter, trial=2))  # the jitter's simulator again: now the most recently used
        run_cell(replace(jitter, kind="alpha_mismatch", level=1e-3, options=()))
        assert len(study._SIMULATORS) == study.SIMULATORS_KEPT == 2
        assert first.build_dir in kept() and second not in kept() and first.compilations == 1
        del first
        gc.collect()
        assert not second.exists()
    finally:
        study._SIMULATORS.clear()
