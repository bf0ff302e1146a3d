"""cuda_standalone builds of the bundled networks where no GPU is lent: LeNet-5 and the full VGG-16.

Each network is converted here (Python 3.11, ``.venv``), saved, and built by ``ttfs-brian build --device
cuda_standalone`` in the Python 3.12 environment of ``make cuda-env`` (brian2cuda 1.0b1), with nvcc for the
compute capability given (default 9.0, an H100). Per network: synapses, code objects, the time Brian2 takes
to generate the project and nvcc to compile it, the peak memory (RSS) of the build, and the size of the
binary. Running the binary needs a GPU; where one is visible, ``bench_brian2.py --devices cuda_standalone``
measures it. Rows go to ``results/bench_cuda_build.csv`` as they are measured.

    make cuda-env && python experiments/bench_cuda_build.py [--models lenet5_mnist5k vgg16_mnist5k32]
"""
from __future__ import annotations

import argparse
import logging
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
PY312 = ROOT / ".venv312" / "bin" / "python"
COLUMNS = ["model", "variant", "dt", "compute_capability", "neurons", "synapses", "code_objects", "generate_s",
           "compile_s", "build_peak_gib", "binary_mib", "nvcc", "machine", "gpu"]
KEY = ["model", "variant", "dt", "compute_capability"]
log = logging.getLogger("bench_cuda_build")


def nvcc_version() -> str:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release ([\d.]+)", out)
    return found.group(1) if found else "unknown"


def build(model: str, variant: str, dt: float, capability: float, folder: Path) -> dict:
    import ttfs_brian
    from ttfs_brian import data, zoo
    from ttfs_brian.study import split_model

    arch, dataset = split_model(model)
    torch_model, _ = zoo.load_pretrained(arch, dataset)
    net = ttfs_brian.convert(torch_model, data.load_dataset(dataset).x_train[:2000], variant=variant, dt=dt)
    path = net.save(folder / "net.npz")
    project = folder / "build"
    rss = folder / "rss_kib"
    command = ["/usr/bin/time", "-f", "%M", "-o", str(rss), str(PY312), "-m", "ttfs_brian.cli", "build", str(path),
               "--device", "cuda_standalone", "--dt", str(dt), "--batch", "1", "--build-dir", str(project),
               "--compute-capability", str(capability)]
    log.info("%s: building cuda_standalone in %s", model, project)
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"{model}: the cuda_standalone build failed:\n{out.stderr[-4000:]}")
    found = re.search(r"(\d+) synapses per sample, compile ([\d.]+) s", out.stdout)
    if not found or not (project / "main").exists():
        raise RuntimeError(f"{model}: no binary or no summary line in the build output:\n{out.stdout[-2000:]}")
    compile_s = float(found.group(2))
    return {"model": model, "variant": variant, "dt": dt, "compute_capability": capability,
            "neurons": sum(layer.size for layer in net.layers.values()), "synapses": int(found.group(1)),
            "code_objects": len(list((project / "code_objects").glob("*.cu"))), "generate_s": wall - compile_s,
            "compile_s": compile_s, "build_peak_gib": float(rss.read_text().split()[-1]) / 2**20,
            "binary_mib": (project / "main").stat().st_size / 2**20, "nvcc": nvcc_version(),
            "machine": platform.machine(), "gpu": "none (built, not run)" if shutil.which("nvidia-smi") is None
            else "visible"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["lenet5_mnist5k", "vgg16_mnist5k32"])
    parser.add_argument("--variant", default="exact", choices=["exact", "sparse"])
    parser.add_argument("--dt", type=float, default=1.0)
    parser.add_argument("--compute-capability", type=float, default=9.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_cuda_build.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not PY312.exists() or shutil.which("nvcc") is None:
        parser.error("needs the Python 3.12 environment of `make cuda-env` and nvcc on PATH")
    from ttfs_brian.store import RowStore

    store = RowStore(args.out, COLUMNS, KEY)
    for model in args.models:
        key = {"model": model, "variant": args.variant, "dt": args.dt, "compute_capability": args.compute_capability}
        if store.has(key):
            continue
        with tempfile.TemporaryDirectory(prefix="ttfs_cuda_") as folder:
            row = build(model, args.variant, args.dt, args.compute_capability, Path(folder))
        log.info("%s", row)
        store.append(row)
    log.info("wrote %s\n%s", args.out, store.read().to_string(index=False))


if __name__ == "__main__":
    main()
