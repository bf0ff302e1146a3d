"""A persistent cache of compiled ``cpp_standalone`` objects, shared by every process of a machine.

Brian2 generates a fresh project for every simulator; compiling it is most of the cost of a run.
Networks of the same structure generate the same code, except that Brian2 orders some declarations,
clock resets and recorded variables by Python's string hashing, which differs from process to
process. So each object is keyed by an order-insensitive fingerprint: the sorted lines of its source,
of the headers every source includes (``objects.h``, its own header) and of the makefile (compiler,
flags, Brian2's paths), plus the optimisation level, the equations they come from
(:mod:`ttfs_brian.brian.equations`) and, in order, the calls of ``main.cpp``. Before ``make`` the objects and
the linked binary whose keys are cached are copied in, newer than their sources, so ``make`` only
compiles what is new; after it the new ones are stored (written under a temporary name and renamed,
so concurrent processes never see half a file). A changed structure changes a fingerprint and is
compiled anew; the cache never hands out a stale object.

The cache lives in ``$TTFS_BRIAN_CACHE`` (default ``~/.cache/ttfs_brian/objects``; ``off`` disables it).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path

from . import equations
from .toolchain import SETUP_SOURCES

log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when ``TTFS_BRIAN_CACHE=off``."""
    setting = os.environ.get("TTFS_BRIAN_CACHE", "")
    if setting.lower() == "off":
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "ttfs_brian" / "objects"


_CALL = re.compile(r"^\s*[A-Za-z_][\w.]*\s*\(.*\)\s*;\s*$")
"""A statement that is a bare call (``_before_run_x();``, ``set_from_command_line(args);``): their order matters."""


def _fingerprint(*texts: str, ordered: str = "") -> str:
    """The sorted lines of every text, so that Brian2's hash-ordered declarations do not matter, and, in their own
    order, the bare call statements of ``ordered`` (``main.cpp``): a run whose arguments are applied before or after
    the spike queues read their delays is another program with the same lines."""
    digest = hashlib.sha256()
    for text in texts:
        for line in sorted(text.splitlines()):
            digest.update(line.encode())
            digest.update(b"\n")
        digest.update(b"\0")
    for line in ordered.splitlines():
        if _CALL.match(line) and "=" not in line:
            digest.update(line.strip().encode())
            digest.update(b"\n")
    return digest.hexdigest()[:32]


def _model_digest() -> str:
    """The equations every generated source comes from: a change of them (statements in another order, say, which
    sorted lines would not see) makes every cached object stale."""
    return hashlib.sha256(Path(equations.__file__).read_bytes()).hexdigest()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class ObjectCache:
    """Keys of the compiled files of one generated project (see the module docstring)."""

    def __init__(self, project: Path, root: Path):
        self.project = Path(project)
        self.root = Path(root)
        common = _read(self.project / "makefile") + _read(self.project / "objects.h") + _model_digest()
        self.keys: dict[Path, str] = {}
        sources = sorted(self.project.glob("*.cpp"))
        if any(source.name.startswith("ttfs_unity_") for source in sources):  # the code objects are in these
            sources = [source for source in sources if source.name not in SETUP_SOURCES]
        else:
            sources += sorted((self.project / "code_objects").glob("*.cpp"))
        for source in sources:
            header = source.with_suffix(".h")
            text = _read(source)
            self.keys[source.with_suffix(".o")] = _fingerprint(common, text, _read(header), source.name,
                                                               ordered=text if source.name == "main.cpp" else "")
        self.keys[self.project / "main"] = _fingerprint(*sorted(self.keys.values()))

    def _entry(self, key: str, path: Path) -> Path:
        return self.root / key[:2] / f"{key}{path.suffix or '.bin'}"

    def restore(self) -> list[str]:
        """Copy every cached file in, newer than everything ``make`` compares it with; returns their names."""
        restored = []
        now = time.time()
        ordered = sorted(self.keys.items(), key=lambda item: item[0].name == "main")
        for rank, (path, key) in enumerate(ordered):
            entry = self._entry(key, path)
            if not entry.exists():
                continue
            shutil.copyfile(entry, path)
            if path.name == "main":
                path.chmod(0o755)
            stamp = now + 1 + rank * 1e-3  # objects, then the binary
            os.utime(path, (stamp, stamp))
            restored.append(path.name)
        log.info("compile cache: %d of %d compiled files restored from %s", len(restored), len(self.keys), self.root)
        return restored

    def store(self) -> int:
        """Save the compiled files that are not cached yet; returns how many."""
        stored = 0
        for path, key in self.keys.items():
            entry = self._entry(key, path)
            if entry.exists() or not path.exists():
                continue
            entry.parent.mkdir(parents=True, exist_ok=True)
            partial = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, partial)
            os.replace(partial, entry)
            stored += 1
        return stored
