"""The README's Python examples run as written (the usage block and the Brian2 monitor example)."""
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_usage_and_monitor_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the usage example writes lenet.npz
    usage = next(b for b in BLOCKS if b.startswith("import ttfs_brian"))
    monitor = next(b for b in BLOCKS if "setup=" in b)
    namespace: dict = {}
    exec(compile(usage, "README usage", "exec"), namespace)
    exec(compile(monitor, "README monitor example", "exec"), namespace)
    assert namespace["monitor"].v.shape[0] == 2
    assert "classifier_5" in {obj.name for obj in namespace["sim"].network.objects}
    assert (tmp_path / "lenet.npz").exists()


@pytest.mark.parametrize("block", [b for b in BLOCKS if "resnet8" in b])
def test_graph_example_runs(block):
    namespace: dict = {}
    setup = next(b for b in BLOCKS if b.startswith("import ttfs_brian")).split("net = ttfs_brian.convert")[0]
    exec(compile(setup + block, "README graph example", "exec"), namespace)
    assert namespace["net"].meta["delay_ms"] == pytest.approx(0.4)


def test_perturbation_example_runs():
    namespace: dict = {}
    usage = next(b for b in BLOCKS if b.startswith("import ttfs_brian")).split("net = ttfs_brian.convert")[0]
    block = next(b for b in BLOCKS if "Perturbation(" in b)
    exec(compile(usage + block, "README perturbation example", "exec"), namespace)
    table = namespace["ttfs_brian"].compare(namespace["res_a"], namespace["res_b"])
    assert table["max_abs_dt_ms"].iloc[:-1].max() < 1e-9 and table.attrs["agreement"] == 1.0
    assert namespace["res_a"].report["dropped"].sum() > 0
