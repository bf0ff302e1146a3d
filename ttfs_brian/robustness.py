"""The report of a robustness study: aggregates over trials, figures, and the Markdown summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .errors import InputError

GROUP = ["model", "dataset", "variant", "engine", "kind", "level"]
LOSS = 0.01
"""Accuracy loss (absolute) at which the summary reports a level."""


def per_trial(rows: pd.DataFrame) -> pd.DataFrame:
    """Shards of one trial combined (weighted by their samples)."""
    settings = rows.groupby(GROUP)[["options", "dt"]].nunique()
    mixed = settings[(settings > 1).any(axis=1)]
    if len(mixed):
        raise InputError(f"the rows hold {len(mixed)} cell(s) run with several kind options or time steps, e.g. "
                         f"{dict(zip(GROUP, mixed.index[0]))}; give each study its own output folder (-o)")
    ordered = rows.assign(end=rows["start"] + rows["samples"]).sort_values(GROUP + ["trial", "start"])
    overlapping = ordered["start"] < ordered.groupby(GROUP + ["trial"])["end"].shift().fillna(-1)
    if overlapping.any():  # e.g. one study on 200 samples, another on 1000: samples 0-199 would count twice
        cell = ordered[overlapping].iloc[0]
        raise InputError(f"the rows of {dict(cell[GROUP + ['trial']])} cover overlapping samples (one ends after "
                         f"sample {int(cell['start'])}); they come from studies of different samples: give each "
                         "study its own output folder (-o), or remove the older rows")
    rows = rows.assign(correct=rows["accuracy"] * rows["samples"], agreeing=rows["agreement"] * rows["samples"],
                       nominal=rows["nominal_accuracy"] * rows["samples"])
    trials = rows.groupby(GROUP + ["trial"], as_index=False).agg(
        samples=("samples", "sum"), correct=("correct", "sum"), agreeing=("agreeing", "sum"), nominal=("nominal", "sum"),
        flagged=("flagged", "sum"), max_abs_dt_ms=("max_abs_dt_ms", "max"), mean_abs_dt_ms=("mean_abs_dt_ms", "mean"),
        level_rel_min=("level_rel_min", "min"), level_rel_max=("level_rel_max", "max"))
    trials["accuracy"] = trials["correct"] / trials["samples"]
    trials["agreement"] = trials["agreeing"] / trials["samples"]
    trials["nominal_accuracy"] = trials["nominal"] / trials["samples"]
    return trials.drop(columns=["correct", "agreeing", "nominal"])


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, variant, engine, kind, level): mean and 95 % confidence interval (Student t) over trials."""
    trials = per_trial(rows)
    out = []
    for key, group in trials.groupby(GROUP):
        entry = dict(zip(GROUP, key))
        entry["trials"] = len(group)
        entry["samples"] = int(group["samples"].iloc[0])
        for column in ("accuracy", "agreement"):
            values = group[column].to_numpy()
            mean = values.mean()
            half = (stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
                    if len(values) > 1 else 0.0)
            entry[column] = mean
            entry[f"{column}_ci95"] = half
        entry["nominal_accuracy"] = group["nominal_accuracy"].iloc[0]
        entry["flagged_mean"] = group["flagged"].mean()
        entry["max_abs_dt_ms"] = group["max_abs_dt_ms"].max()
        entry["level_rel_min"], entry["level_rel_max"] = group["level_rel_min"].min(), group["level_rel_max"].max()
        out.append(entry)
    return pd.DataFrame(out).sort_values(GROUP).reset_index(drop=True)


def losing_levels(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (model, variant, engine, kind): the smallest level whose mean accuracy is ``LOSS`` below the
    unperturbed accuracy on the same samples, in its unit and relative to the windows."""
    rows = []
    for key, group in summary.groupby(["model", "dataset", "variant", "engine", "kind"]):
        model, dataset, variant, engine, kind = key
        base = float(group["nominal_accuracy"].iloc[0])
        group = group.sort_values("level", key=lambda s: s.abs() if kind != "zeta" else -s)
        lost = group[group["accuracy"] <= base - LOSS]
        first = lost.iloc[0] if len(lost) else None
        rows.append({"model": model, "variant": variant, "engine": engine, "kind": kind, "baseline_accuracy": base,
                     "level_losing_1pct": None if first is None else first["level"],
                     "relative_to_windows": None if first is None else
                     f"{first['level_rel_min']:.2g} .. {first['level_rel_max']:.2g}",
                     "accuracy_there": None if first is None else first["accuracy"],
                     "largest_level_tested": group["level"].abs().max() if kind != "zeta" else group["level"].min()})
    return pd.DataFrame(rows)


def figures(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Accuracy change (against the unperturbed network on the same samples, so that Brian2's subset and the
    analytic test split share one axis) and agreement against the level, per model and kind: one curve per
    variant, analytic solid and Brian2 dashed, with 95 % confidence bands; log-scale levels (linear for zeta)."""
    import matplotlib

    from .study import TIME_KINDS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (model, dataset), by_model in summary.groupby(["model", "dataset"]):
        kinds = sorted(by_model["kind"].unique())
        fig, axes = plt.subplots(2, len(kinds), figsize=(3.6 * len(kinds), 6), squeeze=False)
        for col, kind in enumerate(kinds):
            for row, metric in enumerate(("accuracy", "agreement")):
                ax = axes[row][col]
                for (variant, engine), curve in by_model[by_model["kind"] == kind].groupby(["variant", "engine"]):
                    curve = curve.sort_values("level")
                    style = "-" if engine == "analytic" else "--"
                    color = "tab:blue" if variant == "exact" else "tab:orange"
                    level = curve["level"].to_numpy()
                    value = curve[metric] - (curve["nominal_accuracy"] if metric == "accuracy" else 0)
                    ax.plot(level, value, style, color=color, marker="o", ms=3, label=f"{variant}, {engine}")
                    ax.fill_between(level, value - curve[f"{metric}_ci95"], value + curve[f"{metric}_ci95"],
                                    color=color, alpha=0.15)
                if metric == "accuracy":
                    ax.axhline(-LOSS, color="grey", lw=0.8, ls=":")
                if kind != "zeta":
                    ax.set_xscale("log")
                ax.set_xlabel(f"{kind} level" + (" (ms)" if kind in TIME_KINDS else ""))
                ax.set_ylabel("accuracy change" if metric == "accuracy" else "agreement")
                ax.grid(alpha=0.3)
                if row == 0:
                    ax.set_title(kind)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{model} ({dataset}): robustness, mean and 95 % CI over trials")
        fig.tight_layout()
        path = out_dir / f"robustness_{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def describe(summary: pd.DataFrame, rows: pd.DataFrame) -> str:
    """What the rows hold, in words: per model the engines with their samples and trials (seeds), and per kind
    its levels and options, so that a report says which study it is, not which study we usually run."""
    from .study import is_random

    models = []
    for (model, dataset), by_model in summary.groupby(["model", "dataset"]):
        engines = []
        for engine, part in by_model.groupby("engine"):
            noisy = part[part["kind"].map(is_random)]
            n = int(noisy["trials"].max()) if len(noisy) else 0
            trials = f", {n} trial{'s' if n > 1 else ''} per level" if n else ""
            name = "analytic" if engine == "analytic" else "Brian2 (cpp_standalone, precise timing)"
            engines.append(f"{name} on {int(part['samples'].max())} test samples{trials}")
        models.append(f"{model} ({dataset}): " + "; ".join(engines))
    kinds = [_kind_text(kind, sorted(part["level"].unique()), rows.loc[rows["kind"] == kind, "options"])
             for kind, part in summary.groupby("kind")]
    fixed = sorted(k for k in summary["kind"].unique() if not is_random(k))
    return (f"Models: {'. '.join(models)}. Kinds: {', '.join(kinds)}. "
            + (f"{', '.join(fixed)} draw{'s' if len(fixed) == 1 else ''} nothing: one trial. " if fixed else "")
            + "Every draw depends only on the seed, the kind and the sample, so both engines saw the same noise.")


def _kind_text(kind: str, levels: list[float], options: pd.Series) -> str:
    """``spike_jitter (8 levels, 5e-05 .. 0.05 ms, latency_ms 0.2, SPEC's reference levels)``."""
    from .study import REFERENCE_KINDS, TIME_KINDS

    unit = " ms" if kind in TIME_KINDS else ""
    parts = [f"{levels[0]:g}{unit}" if len(levels) == 1
             else f"{len(levels)} levels, {levels[0]:g} .. {levels[-1]:g}{unit}"]
    given: dict[str, list] = {}
    for text in options.unique():
        for k, v in json.loads(text or "{}").items():
            given.setdefault(k, []).append(f"{v:g}" if isinstance(v, float) else str(v))
    parts += [f"{k} {' / '.join(sorted(set(v)))}" for k, v in sorted(given.items())]
    if sorted(REFERENCE_KINDS.get(kind, {}).get("levels", ())) == levels:
        parts.append("SPEC's reference levels")
    return f"{kind} ({', '.join(parts)})"


def twin_check(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model and variant: how far Brian2 cells were from the analytic engine given the same draws."""
    if "twin_max_abs_dt_ms" not in rows:  # rows from before the check
        return pd.DataFrame()
    brian = rows[(rows["engine"] == "brian2") & rows["twin_max_abs_dt_ms"].notna()]
    if brian.empty:
        return pd.DataFrame()
    return brian.groupby(["model", "variant"], as_index=False).agg(
        cells=("trial", "size"), samples=("samples", "sum"), max_abs_dt_ms=("twin_max_abs_dt_ms", "max"),
        flagged=("flagged", "sum"), unmatched_spikes=("twin_unmatched_spikes", "sum"),
        class_disagreements=("twin_disagreements", "sum"), flag_mismatches=("twin_flag_mismatches", "sum"))


def _twin_lines(rows: pd.DataFrame) -> list[str]:
    table = twin_check(rows)
    if table.empty:
        return []
    return ["## Brian2 against the analytic engine, draw for draw", "",
            "Every Brian2 cell is also solved by the analytic engine with the same perturbation, seed and samples. "
            "On the samples that neither engine flagged: the worst spike-time difference over all spikes, the "
            "spikes that one engine emitted and the other did not, and the samples whose class differs; "
            "`flagged`: flagged samples (clipped or early-firing: wrong in a way both engines report; within a "
            "step Brian2 times an early spike differently); `flag_mismatches`: samples flagged by one engine only.", "",
            table.to_markdown(index=False, floatfmt=".2g"), ""]


def write_summary(rows: pd.DataFrame, out_dir: Path, commands: list[str]) -> Path:
    """``summary.csv``, the figures and ``README.md`` of a study in ``out_dir``; ``commands`` reproduce it."""
    summary = aggregate(rows)
    summary.to_csv(out_dir / "summary.csv", index=False)
    losing = losing_levels(summary)
    losing.to_csv(out_dir / "losing_levels.csv", index=False)
    paths = figures(summary, out_dir)
    lines = ["# Robustness", "",
             describe(summary, rows) + " Rows: `rows.csv` (one per cell), `summary.csv` (mean and 95 % CI over trials), "
             "`losing_levels.csv`.", "",
             f"## Where each model loses {LOSS:.0%} accuracy", "",
             "`level_losing_1pct`: the smallest level (ms for jitter; relative for alpha mismatch; the margin for "
             "zeta) at which the mean accuracy over trials is 1 % (absolute) below the unperturbed accuracy; "
             "`relative_to_windows`: that level divided by each hidden layer's window (smallest .. largest); empty: "
             "no tested level lost 1 %.", "", losing.to_markdown(index=False, floatfmt=".3g"), "",
             *_twin_lines(rows)]
    if commands:
        lines += ["## Commands", "", "```bash", *commands, "```", ""]
    lines += ["## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in paths]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def layer_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-layer spike-time shifts stored with each row, as a long table."""
    records = []
    for row in rows.itertuples(index=False):
        for layer, values in json.loads(row.layers).items():
            records.append({"model": row.model, "variant": row.variant, "engine": row.engine, "kind": row.kind,
                            "level": row.level, "trial": row.trial, "layer": layer, **values})
    return pd.DataFrame(records)
