"""The persistent compile cache: a later process reuses the binary of a network of the same structure, whatever
its hash seed; another structure never gets a stale object."""
import json
import os
import subprocess
import sys

SCRIPT = """
import json, sys
import numpy as np, torch, torch.nn as nn, ttfs_brian
from ttfs_brian.brian import Simulator
width, seed = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(seed)
model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(width * 9, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
x = np.random.default_rng(seed).random((30, 1, 6, 6)).astype(np.float32)
net = ttfs_brian.convert(model, x, dt=0.05)
sim = Simulator(net, device="cpp_standalone", dt=0.05)
res = sim.run(x[:5])
worst = ttfs_brian.compare(ttfs_brian.simulate(net, x[:5]), res)["max_abs_dt_ms"].iloc[:-1].max()
print(json.dumps({"cached": sim.adapter.cached_objects, "compile_s": sim.compile_s, "worst": worst}))
"""


def build(tmp_path, width, seed, hash_seed):
    env = {**os.environ, "TTFS_BRIAN_CACHE": str(tmp_path / "cache"), "PYTHONHASHSEED": str(hash_seed)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(width), str(seed)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_same_structure_reuses_everything_other_structures_recompile(tmp_path):
    first = build(tmp_path, width=2, seed=0, hash_seed=1)
    assert first["cached"] == [] and first["worst"] < 1e-9
    again = build(tmp_path, width=2, seed=5, hash_seed=2)  # other weights and windows, other hash seed
    assert again["worst"] < 1e-9
    # everything but main.cpp and the round starts, in which Brian2 writes the round period as a literal
    assert set(again["cached"]) == {"objects.o", "synapses_classes.o", "ttfs_unity_hot0.o", "ttfs_unity_hot1.o",
                                    "ttfs_unity_setup.o"}
    assert again["compile_s"] < first["compile_s"]
    other = build(tmp_path, width=3, seed=0, hash_seed=3)  # another structure: no stale object or binary
    assert other["worst"] < 1e-9
    assert other["cached"] == ["synapses_classes.o"]  # the only file independent of the network
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    # all 8 files of the first build, then the 3 new ones of the second, the 7 of the third
    assert len(files) == 8 + 3 + 7 and not any(p.name.endswith(".tmp") for p in files)


def test_second_simulator_in_one_process_reuses_everything(tmp_path, monkeypatch):
    """Brian2 names code objects and clocks uniquely against every live object of the process: a second
    simulator of the same network, built while the first one lives, generated ``..._codeobject_1`` sources
    and compiled everything again."""
    import numpy as np
    import torch
    import torch.nn as nn

    import ttfs_brian
    from ttfs_brian.brian import Simulator

    monkeypatch.setenv("TTFS_BRIAN_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    x = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    net = ttfs_brian.convert(model, x, dt=0.05)
    first = Simulator(net, device="cpp_standalone", dt=0.05)
    first.run(x)
    second = Simulator(net, device="cpp_standalone", dt=0.05)
    res = second.run(x)
    assert first.adapter.cached_objects == []
    assert len(second.adapter.cached_objects) == 8  # the 7 objects of the make file and the binary
    assert not list((second.adapter.build_dir / "code_objects").glob("*_codeobject_1.cpp"))
    assert ttfs_brian.compare(ttfs_brian.simulate(net, x), res)["max_abs_dt_ms"].iloc[:-1].max() < 1e-9
    assert ttfs_brian.compare(ttfs_brian.simulate(net, x), first.run(x))["max_abs_dt_ms"].iloc[:-1].max() < 1e-9


def test_a_reordered_main_or_changed_equations_is_another_program(tmp_path, monkeypatch):
    """Sorted lines alone conflated a main() that applies the run's arguments after the spike queues read their
    delays with one that applies them before (per-synapse delays then never reached the queues: 13 ms off)."""
    from ttfs_brian.brian import compile_cache

    def key(main: str, equations: str = "v = 1") -> str:
        project = tmp_path / str(abs(hash((main, equations))))
        project.mkdir(exist_ok=True)
        (project / "main.cpp").write_text(main)
        (project / "makefile").write_text("CXX = g++\n")
        monkeypatch.setattr(compile_cache, "_model_digest", lambda: equations)
        return compile_cache.ObjectCache(project, tmp_path / "cache").keys[project / "main.o"]

    late = "int main() {\n    _before_run_queue();\n    set_from_command_line(args);\n    net.run(1.0);\n}\n"
    early = "int main() {\n    set_from_command_line(args);\n    _before_run_queue();\n    net.run(1.0);\n}\n"
    assert sorted(late.splitlines()) == sorted(early.splitlines()) and key(late) != key(early)
    shuffled = "int main() {\n    _array_b[0] = 0;\n    _array_a[0] = 0;\n    net.run(1.0);\n}\n"  # hash-ordered resets
    assert key(shuffled) == key("int main() {\n    _array_a[0] = 0;\n    _array_b[0] = 0;\n    net.run(1.0);\n}\n")
    assert key(late) != key(late, equations="I = 2\nv = 1")
