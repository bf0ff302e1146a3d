"""The report of a robustness study: per-level intervals over samples, the breaking points, figures and the summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .errors import InputError
from .intervals import RESOLUTION, floor_half_width, loss_verdict, mean_interval
from .search import FACTOR

GROUP = ["model", "dataset", "variant", "engine", "kind", "level"]
LOSS = RESOLUTION
"""Accuracy loss (absolute) at which the summary reports a level."""


def per_trial(rows: pd.DataFrame) -> pd.DataFrame:
    """Shards of one trial joined: samples, flags and per-sample outcomes (concatenated in sample order)."""
    settings = rows.groupby(GROUP)[["options", "dt"]].nunique()
    mixed = settings[(settings > 1).any(axis=1)]
    if len(mixed):
        raise InputError(f"the rows hold {len(mixed)} cell(s) run with several kind options or time steps, e.g. "
                         f"{dict(zip(GROUP, mixed.index[0]))}; give each study its own output folder (-o)")
    if "outcomes" not in rows or rows["outcomes"].isna().any():
        raise InputError("the rows lack per-sample outcomes (written by an older ttfs_brian); rerun the study "
                         "(ttfs-brian sweep resumes and recomputes only those cells)")
    ordered = rows.assign(end=rows["start"] + rows["samples"]).sort_values(GROUP + ["trial", "start"])
    overlapping = ordered["start"] < ordered.groupby(GROUP + ["trial"])["end"].shift().fillna(-1)
    if overlapping.any():  # e.g. one study on 200 samples, another on 1000: samples 0-199 would count twice
        cell = ordered[overlapping].iloc[0]
        raise InputError(f"the rows of {dict(cell[GROUP + ['trial']])} cover overlapping samples (one ends after "
                         f"sample {int(cell['start'])}); they come from studies of different samples: give each "
                         "study its own output folder (-o), or remove the older rows")
    return ordered.groupby(GROUP + ["trial"], as_index=False).agg(
        samples=("samples", "sum"), first=("start", "min"), classes=("classes", "max"), outcomes=("outcomes", "sum"),
        flagged=("flagged", "sum"), max_abs_dt_ms=("max_abs_dt_ms", "max"), level_rel_min=("level_rel_min", "min"),
        level_rel_max=("level_rel_max", "max"), layers=("layers", "first"))


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, variant, engine, kind, level): means over samples and trials with 95 % intervals over samples
    (:mod:`ttfs_brian.intervals`): accuracy, the paired loss against the unperturbed network on the same samples
    (and its verdict at 1 %), agreement, and for Brian2 the paired difference to the analytic engine under the
    same draws (``vs_analytic``: analytic minus Brian2 accuracy)."""
    from .study import TIME_KINDS, decode_outcomes

    trials = per_trial(rows)
    out = []
    for key, group in trials.groupby(GROUP):
        entry = dict(zip(GROUP, key))
        if group["samples"].nunique() != 1 or group["first"].nunique() != 1:
            raise InputError(f"the trials of {entry} cover different samples ({sorted(group['samples'].unique())}); "
                             "every trial of a level must run on the same samples")
        decoded = [decode_outcomes(text) for text in group["outcomes"]]
        bits = {name: np.array([d[name] for d in decoded], dtype=np.float64) for name in decoded[0]}
        accuracy = mean_interval(bits["correct"])
        loss = mean_interval(bits["nominal_correct"] - bits["correct"])
        agreement = mean_interval(bits["agree"])
        entry.update(trials=len(group), samples=int(group["samples"].iloc[0]), classes=int(group["classes"].iloc[0]),
                     accuracy=accuracy.mean, accuracy_ci95=accuracy.half,
                     nominal_accuracy=float(bits["nominal_correct"][0].mean()),
                     loss=loss.mean, loss_ci95=loss.half, loss_low=loss.low, loss_high=loss.high,
                     verdict=loss_verdict(loss), samples_to_resolve=loss.samples_to_resolve(),
                     agreement=agreement.mean, agreement_ci95=agreement.half)
        if entry["engine"] != "analytic":
            twin = mean_interval(bits["twin_correct"] - bits["correct"])
            entry.update(vs_analytic=twin.mean, vs_analytic_ci95=twin.half)
        entry["flagged_mean"] = group["flagged"].mean()
        entry["max_abs_dt_ms"] = group["max_abs_dt_ms"].max()
        entry["level_rel_min"], entry["level_rel_max"] = group["level_rel_min"].min(), group["level_rel_max"].max()
        windows = [v["window_ms"] for v in json.loads(group["layers"].iloc[0]).values()]
        entry["window_ms_median"] = float(np.median(windows)) if windows else np.nan
        entry["level_rel_median"] = (entry["level"] / entry["window_ms_median"] if entry["kind"] in TIME_KINDS
                                     else entry["level"])
        out.append(entry)
    return pd.DataFrame(out).sort_values(GROUP).reset_index(drop=True)


def losing_levels(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (model, variant, engine, kind): the mildest level (:func:`ttfs_brian.search.severity`: the largest time
    constant, the smallest jitter) where a loss of at least 1 % is claimed (the mean loss is >= 1 % and its interval
    excludes no loss), in its unit and relative to the windows; the milder levels that the samples could not
    resolve; the samples that resolving 1 % would take; and the harshest level tested."""
    from .search import severity

    rows = []
    for key, group in summary.groupby(["model", "dataset", "variant", "engine", "kind"]):
        model, dataset, variant, engine, kind = key
        group = group.sort_values("level", key=lambda s: s.map(lambda level: severity(kind, level)))
        lost = group[group["verdict"] == "loses"]
        first = lost.iloc[0] if len(lost) else None
        before = group if first is None else group.iloc[:list(group.index).index(first.name)]
        unresolved = before[before["verdict"] == "unresolved"]
        rows.append({"model": model, "variant": variant, "engine": engine, "kind": kind,
                     "samples": int(group["samples"].max()), "trials": int(group["trials"].max()),
                     "baseline_accuracy": float(group["nominal_accuracy"].iloc[0]),
                     "level_losing_1pct": None if first is None else first["level"],
                     "loss_there": None if first is None else _pm(first["loss"], first["loss_ci95"]),
                     "relative_to_windows": None if first is None or kind not in _time_kinds() else
                     f"{first['level_rel_min']:.2g} .. {first['level_rel_max']:.2g}",
                     "unresolved_below": len(unresolved),
                     "samples_to_resolve_1pct": int(unresolved["samples_to_resolve"].max()) if len(unresolved) else None,
                     "harshest_level_tested": group["level"].iloc[-1]})
    return pd.DataFrame(rows)


def _time_kinds():
    from .study import TIME_KINDS
    return TIME_KINDS


def _pm(mean: float, half: float) -> str:
    return f"{mean:+.3f} ± {half:.3f}"


def breaking_points(summary: pd.DataFrame, searched: Sequence[str] | None = None) -> pd.DataFrame:
    """The search's brackets (:mod:`ttfs_brian.search`) with the accuracy, loss and interval at each end, in the
    kind's unit and relative to the windows (time kinds); ``searched``: the engines the search ran for (default:
    every engine of the rows)."""
    from .search import brackets

    by_level = summary.set_index(["model", "dataset", "variant", "engine", "kind", "level"])
    rows = []
    for (model, dataset, variant, engine, kind), b in brackets(summary):
        if searched is not None and engine not in searched:
            continue
        entry = {"model": model, "variant": variant, "engine": engine, "kind": kind, "target": b.target,
                 "status": b.status, "below": b.below, "above": b.above}
        for side in ("below", "above"):
            level = getattr(b, side)
            if level is None:
                continue
            row = by_level.loc[(model, dataset, variant, engine, kind, level)]
            entry[f"accuracy_{side}"] = _pm(row["accuracy"], row["accuracy_ci95"]).lstrip("+")
            entry[f"loss_{side}"] = _pm(row["loss"], row["loss_ci95"])
            if kind in _time_kinds():
                entry[f"{side}_relative"] = f"{row['level_rel_min']:.2g} .. {row['level_rel_max']:.2g}"
        entry["samples"] = int(by_level.xs((model, dataset, variant, engine, kind))["samples"].max())
        rows.append(entry)
    return pd.DataFrame(rows)


def figures(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Accuracy change (paired against the unperturbed network on the same samples, so that Brian2's subset and the
    analytic test split share one axis) and agreement against the level, per model and kind: one curve per
    variant, analytic solid and Brian2 dashed, with 95 % bands over samples; log-scale levels (linear for zeta);
    and :func:`relative_figure`."""
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
                    value, half = ((-curve["loss"], curve["loss_ci95"]) if metric == "accuracy"
                                   else (curve["agreement"], curve["agreement_ci95"]))
                    ax.plot(level, value, style, color=color, marker="o", ms=3, label=f"{variant}, {engine}")
                    ax.fill_between(level, value - half, value + half, color=color, alpha=0.15)
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
        fig.suptitle(f"{model} ({dataset}): robustness, mean and 95 % interval over samples")
        fig.tight_layout()
        path = out_dir / f"robustness_{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    if (summary["engine"] == "analytic").any():
        paths.append(relative_figure(summary, out_dir))
    return paths


def relative_figure(summary: pd.DataFrame, out_dir: Path) -> Path:
    """Every model on one axis per kind: the accuracy change of the analytic engine against the level relative to
    the windows (a jitter's sigma over the median window of the model's hidden layers; mismatch is relative
    already; zeta as the window's scale ``1 + zeta``), ``exact`` solid and ``sparse`` dashed, 95 % bands."""
    import matplotlib

    from .study import TIME_KINDS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    analytic = summary[summary["engine"] == "analytic"]
    kinds = sorted(analytic["kind"].unique())
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), squeeze=False)
    colors = dict(zip(sorted(analytic["model"].unique()), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, kind in zip(axes[0], kinds):
        for (model, variant), curve in analytic[analytic["kind"] == kind].groupby(["model", "variant"]):
            x = curve["level_rel_median"] if kind != "zeta" else 1 + curve["level"]
            order = np.argsort(x.to_numpy())
            x, y, half = (np.asarray(v)[order] for v in (x, -curve["loss"], curve["loss_ci95"]))
            ax.plot(x, y, "-" if variant == "exact" else "--", color=colors[model], marker="o", ms=2.5,
                    label=f"{model}, {variant}")
            ax.fill_between(x, y - half, y + half, color=colors[model], alpha=0.12)
        ax.axhline(-LOSS, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        if kind == "zeta":
            ax.invert_xaxis()
        ax.set_xlabel("sigma / median window" if kind in TIME_KINDS else "window scale 1 + zeta" if kind == "zeta"
                      else f"{kind} level (relative)")
        ax.set_ylabel("accuracy change")
        ax.set_title(kind)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("all models, analytic engine: accuracy change against the level relative to the windows")
    fig.tight_layout()
    path = out_dir / "robustness_relative.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe(summary: pd.DataFrame, rows: pd.DataFrame) -> str:
    """What the rows hold, in words: per model the engines with their samples and trials (seeds), and per kind
    its levels and options, so that a report says which study it is, not which study we usually run."""
    from .study import is_random

    models = []
    for (model, dataset), by_model in summary.groupby(["model", "dataset"]):
        engines = []
        for engine, part in by_model.groupby("engine"):
            noisy = part[part["kind"].map(is_random)]
            low, high = (int(noisy["trials"].min()), int(noisy["trials"].max())) if len(noisy) else (0, 0)
            span = f"{low}" if low == high else f"{low} to {high}"  # resumed studies can mix trial counts
            trials = f", {span} trial{'s' if high > 1 else ''} per level" if high else ""
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


def twin_check(rows: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per model and variant: how far Brian2 cells were from the analytic engine given the same draws, on the samples
    where Brian2 can time every crossing (flagged ones included), and the paired accuracy difference (analytic minus
    Brian2 on the same samples and draws) with the widest interval of any level."""
    if "twin_compared" not in rows:
        return pd.DataFrame()
    brian = rows[(rows["engine"] == "brian2") & rows["twin_compared"].notna()]
    if brian.empty:
        return pd.DataFrame()
    table = brian.groupby(["model", "variant"], as_index=False).agg(
        cells=("trial", "size"), samples=("samples", "sum"), compared=("twin_compared", "sum"),
        flagged_compared=("twin_flagged_compared", "sum"), max_abs_dt_ms=("twin_max_abs_dt_ms", "max"),
        unmatched_spikes=("twin_unmatched_spikes", "sum"), class_disagreements=("twin_disagreements", "sum"),
        flag_mismatches=("twin_flag_mismatches", "sum"))
    paired = summary[summary["engine"] == "brian2"].groupby(["model", "variant"]).agg(
        worst_difference=("vs_analytic", lambda v: v.abs().max()), widest_ci95=("vs_analytic_ci95", "max"),
        levels_differing=("vs_analytic", lambda v: int((v != 0).sum())))
    return table.join(paired, on=["model", "variant"])


def _twin_lines(rows: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    table = twin_check(rows, summary)
    if table.empty:
        return []
    return ["## Brian2 against the analytic engine, draw for draw", "",
            "Every Brian2 cell is also solved by the analytic engine with the same perturbation, seed and samples. "
            "`compared`: the samples on which Brian2's step-end threshold test can time every crossing (no input "
            "between a neuron's crossing and the end of its step; `ttfs_brian.events.inputs_in_crossing_step`), "
            "flagged ones included (`flagged_compared`); on them the worst spike-time difference, the spikes that one "
            "engine emitted and the other did not, the samples whose class or flags differ. `worst_difference`: the "
            "largest paired accuracy difference (analytic minus Brian2, same samples and draws) of any level, and "
            "`widest_ci95` its widest 95 % interval; `levels_differing`: levels whose paired difference is not 0.", "",
            _markdown(table, ".2g"), ""]


def _bracket_text(row) -> str:
    unit = " ms" if row["kind"] in _time_kinds() else ""
    if row["status"] == "found":
        return f"{row['below']:g} .. {row['above']:g}{unit}"
    if row["status"] == "beyond":
        return f"> {row['below']:g}{unit} (cap)"
    if row["status"] == "under":
        return f"<= {row['above']:g}{unit}"
    return "open: " + (f"> {row['below']:g}" if row["below"] is not None and row["below"] == row["below"] else "") + (
        f" <= {row['above']:g}" if row["above"] is not None and row["above"] == row["above"] else "")


def _markdown(table: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A table as Markdown, with empty cells where a value does not apply (not "nan") and counts as integers."""
    def cell(value):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if isinstance(value, (float, np.floating)):
            return str(int(value)) if float(value).is_integer() and abs(value) >= 10 else format(value, floatfmt)
        return value
    return table.map(cell).to_markdown(index=False, disable_numparse=True)


def write_summary(rows: pd.DataFrame, out_dir: Path, commands: list[str],
                  searched: Sequence[str] | None = None) -> Path:
    """``summary.csv``, ``losing_levels.csv``, ``breaking_points.csv``, the figures and ``README.md`` of a study in
    ``out_dir``; ``commands`` reproduce it; ``searched``: the engines whose breaking points were searched."""
    summary = aggregate(rows)
    summary.to_csv(out_dir / "summary.csv", index=False)
    losing = losing_levels(summary)
    losing.to_csv(out_dir / "losing_levels.csv", index=False)
    points = breaking_points(summary, searched)
    points.to_csv(out_dir / "breaking_points.csv", index=False)
    paths = figures(summary, out_dir)
    lines = ["# Robustness", "",
             describe(summary, rows) + " Rows: `rows.csv` (one per cell, with every sample's outcome), `summary.csv` "
             "(per level: means and 95 % intervals over samples), `losing_levels.csv`, `breaking_points.csv`.", "",
             "Every interval is over test samples (each sample's trials averaged first), paired against the "
             "unperturbed network on the same samples, and never narrower than what the samples can show "
             f"(`ttfs_brian/intervals.py`: at least {floor_half_width(20):.0%} for 20 samples, "
             f"{floor_half_width(1000):.2%} for 1,000). A level *loses* 1 % when the mean loss is at least 1 % and "
             "its interval excludes no loss; it *holds* when the whole interval lies below 1 %; otherwise its "
             "samples cannot tell (`unresolved`, with the samples that would).", ""]
    found = points[points["status"] != "open"] if len(points) else points
    if len(points):
        table = points.assign(bracket=points.apply(_bracket_text, axis=1))
        keep = [c for c in ("model", "variant", "engine", "kind", "target", "bracket", "loss_below", "loss_above",
                            "accuracy_below", "accuracy_above", "below_relative", "above_relative", "samples")
                if c in table]
        lines += ["## Breaking points", "",
                  "Per model, variant, engine and kind, the level where the mean accuracy first loses 1 % "
                  "(`loss_1pct`) and where it falls to half of the chance-corrected accuracy (`half_chance`), "
                  f"bracketed to a factor {FACTOR:g} by bisection on a log scale from the grid "
                  "(`ttfs_brian/search.py`): `bracket` is the last level below the target and the first at or above "
                  "it (`> x (cap)`: not reached up to the kind's cap), with the loss and accuracy at both ends "
                  "(mean ± 95 % interval) and, for timing kinds, the ends relative to the hidden layers' windows "
                  f"(smallest .. largest). {len(found)} of {len(points)} targets closed.", "",
                  _markdown(table[keep]), ""]
    lines += [f"## Where each model loses {LOSS:.0%} accuracy", "",
              "`level_losing_1pct`: the mildest level (the smallest jitter or mismatch, the largest margin zeta or "
              "time constant) that loses 1 % as defined above, with its loss (mean ± 95 % interval); "
              "`relative_to_windows`: that level over each hidden layer's window (smallest .. largest); "
              "`unresolved_below`: the milder levels whose samples could not tell; `samples_to_resolve_1pct`: the "
              "samples an unresolved level would need; `harshest_level_tested`: the most damaging level run.", "",
              _markdown(losing), "",
              *_twin_lines(rows, summary)]
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
