"""Measurements as rows of a CSV file, keyed by every parameter that produced them.

Long jobs (the conversion table, benchmarks, robustness sweeps) append each row as soon as it is
measured, so an interrupted run loses at most the row in progress, and a rerun computes only the
rows whose key is missing. A row is valid when it ends with the sentinel column ``row_complete``:
a line cut short by a crash lacks it and is dropped (and recomputed), whatever column it was cut in.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import InputError

log = logging.getLogger(__name__)

SENTINEL = "row_complete"


def key_of(values: Iterable[Any]) -> tuple[str, ...]:
    """A row key as strings, so that keys read back from the CSV compare equal to fresh ones."""
    out = []
    for value in values:
        if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
            out.append("")  # as pandas writes a missing value
        elif isinstance(value, (float, np.floating)):
            out.append(repr(float(value)))
        else:
            out.append(str(value))
    return tuple(out)


class RowStore:
    """Rows with ``columns`` in the CSV file ``path``, unique by ``key`` (a subset of the columns)."""

    def __init__(self, path: str | Path, columns: Sequence[str], key: Sequence[str], required: Sequence[str] = ()):
        missing = [k for k in [*key, *required] if k not in columns]
        if missing:
            raise ValueError(f"key or required columns {missing} are not among the columns")
        self.path = Path(path)
        self.columns = list(columns)
        self.key = list(key)
        self.required = list(required)
        self._keys: set[tuple[str, ...]] | None = None

    def read(self) -> pd.DataFrame:
        """The valid rows; damaged rows (cut short) are dropped from the file too."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=self.columns)
        raw = pd.read_csv(self.path, dtype=str, keep_default_na=False, on_bad_lines="skip", engine="python")
        unkeyed = [k for k in self.key if k not in raw.columns]
        if unkeyed:  # its rows cannot be told apart by what produced them: reusing them could be wrong
            raise InputError(f"{self.path} has no columns {unkeyed}, which now identify its rows (written by an "
                             f"older ttfs_brian, or another kind of table); write to a new file, or add the columns")
        if SENTINEL in raw.columns:
            complete = raw[SENTINEL] == "1"
        else:  # a file written before the sentinel existed: keep the rows whose last field is there
            complete = raw.iloc[:, -1].fillna("") != ""
        valid = raw[complete].drop(columns=[SENTINEL], errors="ignore")
        dropped = len(raw) - len(valid)
        lacking = np.zeros(len(valid), dtype=bool)
        for column in self.required:  # rows of an older version, without what the readers now need
            lacking |= (valid[column] == "").to_numpy() if column in valid.columns else True
        valid = valid[~lacking]
        if dropped or lacking.any() or SENTINEL not in raw.columns or list(valid.columns) != self.columns:
            if dropped:
                log.warning("%s: dropped %d damaged row(s) (cut short); they will be recomputed",
                            self.path, dropped)
            if lacking.any():
                log.warning("%s: dropped %d row(s) without %s (written by an older ttfs_brian); they will be "
                            "recomputed", self.path, int(lacking.sum()), ", ".join(self.required))
            self._rewrite(valid.reindex(columns=self.columns))
        table = pd.read_csv(self.path) if len(valid) else pd.DataFrame(columns=self.columns + [SENTINEL])
        return table.drop(columns=[SENTINEL])

    def keys(self) -> set[tuple[str, ...]]:
        if self._keys is None:
            table = self.read()
            self._keys = {key_of(row) for row in table[self.key].itertuples(index=False)}
        return self._keys

    def has(self, row: dict[str, Any]) -> bool:
        return key_of(row[k] for k in self.key) in self.keys()

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and flush it to disk before returning."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}")
        keys = self.keys()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        frame = pd.DataFrame([{**row, SENTINEL: 1}], columns=self.columns + [SENTINEL])
        with open(self.path, "a+b") as handle:
            if not new_file:  # a line cut short must not swallow the new row
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
        with open(self.path, "a", newline="") as handle:
            frame.to_csv(handle, header=new_file, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        keys.add(key_of(row[k] for k in self.key))

    def _rewrite(self, table: pd.DataFrame) -> None:
        """Replace the file atomically with ``table`` (and the sentinel column)."""
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        table.assign(**{SENTINEL: 1}).to_csv(tmp, index=False)
        os.replace(tmp, self.path)
