"""Aggregate a sweep's consolidated results into seed statistics, a summary and a report.

Reads ``<sweep>/results/{trials,steps,layers,attention}.parquet`` (only ``trials`` is required)
and writes ``<sweep>/summary/``:

- ``cells.parquet``: one row per (configuration, schedule, comparator, metric) with seed
  statistics of eval_ppl, eval_loss and (where the trials recorded them) the held-out loss by
  position in the block (eval_loss_pos1, eval_loss_pos2_4, eval_loss_pos5p), and paired
  comparisons against the baseline configuration of the same schedule and seed (see
  ``orchestrator.analysis.stats``), with ``seeds_2pct``: the paired seeds a t-test would need to detect a
  2% ratio at 80% power given the observed spread of the per-seed ratios;
- ``provenance.json``: what was run (``orchestrator.analysis.provenance``);
- ``layers.parquet``: one row per (cell, layer, quantity): mean and t interval over seeds of the
  per-layer lambda, entropy_bits, entropy_norm and in_block_mass at each trial's last step;
- ``curves.parquet``: one row per (cell, split, step, metric): mean and t interval over seeds of
  the training and eval loss/perplexity curves;
- ``excluded.parquet``: the trials that were not averaged in (diverged, errored, missing, or
  completed without a finite metric), with the reason;
- ``report.html`` and its figures as PNG files (``orchestrator.analysis.report``), unless ``report=False``;
  then an older report and its figures are removed so they never contradict the new tables.

Only ``status == "completed"`` trials with finite metrics are averaged; every other trial is
counted and listed. Large tables (steps, layers) are reduced with vectorised groupby.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from localist import io as lio
from orchestrator.analysis import stats

METRICS = ("eval_ppl", "eval_loss")  # a trial is usable only with both finite
POSITION_METRICS = ("eval_loss_pos1", "eval_loss_pos2_4", "eval_loss_pos5p")  # optional, by block position
LAYER_QUANTITIES = ("lambda", "entropy_bits", "entropy_norm", "in_block_mass")
CURVE_METRICS = ("loss", "ppl")
SCHEDULE_ORDER = ("linear", "quadratic", "cubic", "quartic", "quintic", "uniform")
KEYS = ("configuration", "schedule", "comparator")
TRIAL_REQUIRED = ("trial_id", "configuration", "schedule", "comparator", "seed", "status",
                  "eval_loss", "eval_ppl")
TRIAL_OPTIONAL = ("run_trial_id", "error", "locality.peak") + POSITION_METRICS
PEAK = "locality.peak"
CELL_COLUMNS = (
    "configuration", "schedule", "comparator", "metric", "peak", "is_baseline", "n_trials",
    "n_excluded", "n_seeds", "mean", "std", "sem", "ci_low", "ci_high", "boot_low", "boot_high",
    "n_paired", "mean_diff", "diff_ci_low", "diff_ci_high", "ratio_mean", "ratio_ci_low",
    "ratio_ci_high", "ratio_std", "seeds_2pct", "p_ttest", "p_wilcoxon", "p_holm",
    "p_wilcoxon_holm", "d_z", "note",
)
REPORT_FILES = ("report.html", "ratio_heatmap.png", "ratio_by_peak.png", "positions.png", "layers.png",
                "curves.png", "attention.png")
MOMENT_COLUMNS = ("n_seeds", "mean", "std", "sem", "ci_low", "ci_high")


class AggregateError(ValueError):
    """A user error (no results, unknown baseline, malformed results): the CLI exits with 2."""


# --------------------------------------------------------------------------------------------
# reading


def _read(uri: str, columns: tuple[str, ...], required: tuple[str, ...] = (),
          filter_expr=None) -> pa.Table | None:
    """The wanted columns that exist of a Parquet file or dataset; None when it is absent.

    Raises AggregateError when a required column is missing.
    """
    if not lio.exists(uri):
        return None
    fs, path = lio.resolve(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    names = dataset.schema.names
    missing = [c for c in required if c not in names]
    if missing and dataset.count_rows() == 0:
        return pa.table({})  # an empty table written without its data columns
    if missing:
        raise AggregateError(f"{uri} lacks the column(s) {', '.join(missing)}")
    return dataset.to_table(columns=[c for c in columns if c in names], filter=filter_expr)


def _optional_frame(uri: str, columns: tuple[str, ...], required: tuple[str, ...],
                    notes: dict, section: str) -> pd.DataFrame | None:
    """A results table as pandas (strings as categoricals), or None with a note in ``notes``."""
    try:
        table = _read(uri, columns, required)
    except AggregateError as exc:
        notes[section] = str(exc)
        return None
    if table is None or table.num_rows == 0:
        notes[section] = f"no {section} data ({uri} {'is empty' if table is not None else 'is absent'})"
        return None
    return table.to_pandas(strings_to_categorical=True)


def _clean_label(series: pd.Series) -> pd.Series:
    """String labels as object dtype with None for null or empty."""
    out = series.astype(object)
    return out.where(out.notna() & (out.astype(str) != ""), None).astype(object)


def load_trials(sweep_uri: str) -> pd.DataFrame:
    uri = lio.join(sweep_uri, "results", "trials.parquet")
    table = _read(uri, TRIAL_REQUIRED + TRIAL_OPTIONAL, TRIAL_REQUIRED)
    if table is None:
        raise AggregateError(f"no results at {sweep_uri}: {uri} does not exist "
                             "(has the sweep run and been collected?)")
    if table.num_rows == 0:
        raise AggregateError(f"no results at {sweep_uri}: {uri} has no rows")
    df = table.to_pandas()
    for col in KEYS + ("trial_id", "run_trial_id", "status", "error"):
        if col in df:
            df[col] = _clean_label(df[col])
    df["status"] = df["status"].fillna("missing").str.lower()
    if "run_trial_id" not in df:
        df["run_trial_id"] = df["trial_id"]
    df["run_trial_id"] = df["run_trial_id"].fillna(df["trial_id"])
    if "error" not in df:
        df["error"] = None
    df[PEAK] = pd.to_numeric(df[PEAK], errors="coerce") if PEAK in df else np.nan
    for m in METRICS + tuple(p for p in POSITION_METRICS if p in df):
        df[m] = pd.to_numeric(df[m], errors="coerce").astype(float)
        df.loc[~np.isfinite(df[m]), m] = np.nan
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    # a comparator row is one with a comparator name, whatever else it carries
    comp = df["comparator"].notna()
    df.loc[comp, ["configuration", "schedule"]] = None
    return df.drop_duplicates("trial_id", keep="last").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# cells, ordering and the baseline


def _null(x) -> bool:
    """True for a missing label (None, NaN, pd.NA)."""
    return x is None or bool(pd.isna(x))


def _natural(name) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                 for t in re.split(r"(\d+)", "" if _null(name) else str(name)))


def configuration_order(trials: pd.DataFrame) -> list[str]:
    """Grid configurations ordered by peak locality (then name)."""
    grid = trials[trials["comparator"].isna() & trials["configuration"].notna()]
    peaks = grid.groupby("configuration")[PEAK].first()
    return sorted(peaks.index, key=lambda c: (not np.isfinite(peaks[c]),
                                              peaks[c] if np.isfinite(peaks[c]) else 0.0,
                                              _natural(c)))


def schedule_order(names) -> list:
    known = {s: i for i, s in enumerate(SCHEDULE_ORDER)}
    present = {n for n in names if not _null(n)}
    return sorted(present, key=lambda s: (known.get(s, len(known)), _natural(s)))


def resolve_baseline(trials: pd.DataFrame, baseline: str | None = None) -> str:
    """The baseline configuration: ``baseline`` if given, else the one whose peak is 0."""
    configs = configuration_order(trials)
    if not configs:
        raise AggregateError("the results hold no grid configurations (only comparators), "
                             "so there is no baseline to compare against")
    valid = ", ".join(configs)
    if baseline is not None:
        if baseline not in configs:
            raise AggregateError(f"unknown baseline configuration {baseline!r}; valid: {valid}")
        return baseline
    peaks = trials[trials["comparator"].isna()].groupby("configuration")[PEAK].first()
    if np.isfinite(peaks.to_numpy(dtype=float)).any():
        zero = [c for c in configs if peaks.get(c) == 0]
        what = "locality.peak == 0"
    else:
        zero = [c for c in configs
                if re.fullmatch(r"(peak[-_]?0+(\.0+)?|baseline|distributed)", str(c).lower())]
        what = "a name like 'peak-0'"
    if len(zero) == 1:
        return zero[0]
    if not zero:
        raise AggregateError(f"no configuration has {what}; pass --baseline, one of: {valid}")
    raise AggregateError(f"several configurations have {what} ({', '.join(zero)}); "
                         f"pass --baseline, one of: {valid}")


def cell_table(trials: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per grid cell and comparator, in report order; index = cell id."""
    configs = configuration_order(trials)
    scheds = schedule_order(trials["schedule"].unique())
    rank_c = {c: i for i, c in enumerate(configs)}
    rank_s = {s: i for i, s in enumerate(scheds)}
    keys = trials[list(KEYS)].drop_duplicates()
    peaks = trials.groupby(trials["configuration"].fillna(trials["comparator"]))[PEAK].first()
    rows = []
    for conf, sched, comp in keys.itertuples(index=False):
        conf, sched, comp = (None if _null(v) else v for v in (conf, sched, comp))
        if comp is not None:
            order = (1, 0, 0, _natural(comp))
            peak = peaks.get(comp, np.nan)
        else:
            order = (0, rank_c.get(conf, len(rank_c)), rank_s.get(sched, len(rank_s)), ())
            peak = peaks.get(conf, np.nan)
        rows.append({"configuration": conf, "schedule": sched, "comparator": comp,
                     "peak": np.nan if _null(peak) else float(peak),
                     "is_baseline": comp is None and conf == baseline, "_order": order})
    cells = pd.DataFrame({k: pd.Series([r[k] for r in rows], dtype=object if k in KEYS else None)
                          for k in rows[0]})
    cells = cells.iloc[sorted(range(len(cells)), key=lambda i: cells["_order"].iloc[i])]
    return cells.drop(columns="_order").reset_index(drop=True)


def label(configuration, schedule, comparator) -> str:
    if not _null(comparator):
        return str(comparator)
    return str(configuration) if _null(schedule) else f"{configuration}/{schedule}"


def _attach_cells(trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    key = cells[list(KEYS)].astype(object).fillna("\x00")
    ids = {tuple(k): i for i, k in zip(cells.index, key.itertuples(index=False))}
    tkey = trials[list(KEYS)].astype(object).fillna("\x00")
    out = trials.copy()
    out["cell"] = [ids[tuple(k)] for k in tkey.itertuples(index=False)]
    return out


def excluded_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials not averaged in, with the reason: not completed, or completed without a metric."""
    nonfinite = ~np.isfinite(trials[list(METRICS)].to_numpy(dtype=float))
    done = (trials["status"] == "completed").to_numpy()
    mask = ~done | nonfinite.any(axis=1)
    out = trials.loc[mask, ["trial_id", "run_trial_id", *KEYS, "seed", "status", "error"]].copy()
    out["reason"] = [
        "completed without finite " + ", ".join(m for m, bad in zip(METRICS, nf) if bad) if d else status
        for status, d, nf in zip(out["status"], done[mask], nonfinite[mask])
    ]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# per-cell statistics


def _baseline_values(vals: pd.DataFrame, cells: pd.DataFrame, sched_rank: dict) -> tuple[dict, dict]:
    """Baseline {schedule: {seed: value}} and {seed: value} (first schedule in order per seed)."""
    base_cells = cells.index[cells["is_baseline"]]
    base = vals[vals["cell"].isin(base_cells)].copy()
    base["_rank"] = base["schedule"].map(lambda s: sched_rank.get(s, len(sched_rank)))
    # a grid without a schedule axis has null schedules: one key (None) however pandas spells them
    by_sched = {None if _null(s) else s: dict(zip(g["seed"], g["value"]))
                for s, g in base.groupby("schedule", dropna=False)}
    first = base.sort_values(["_rank", "seed"]).drop_duplicates("seed")
    return by_sched, dict(zip(first["seed"], first["value"]))


def _status_note(group: pd.DataFrame) -> str:
    bad = group.loc[group["status"] != "completed", "status"].value_counts().sort_index()
    if bad.empty:
        return ""
    parts = ", ".join(f"{k} {v}" for k, v in bad.items())
    return f"{int(bad.sum())} excluded ({parts})"


def metrics_present(trials: pd.DataFrame) -> list[str]:
    """eval_ppl, eval_loss, and the per-position losses that some trial recorded."""
    return list(METRICS) + [m for m in POSITION_METRICS
                            if m in trials and np.isfinite(trials[m].to_numpy(dtype=float)).any()]


def cell_statistics(trials: pd.DataFrame, cells: pd.DataFrame, bootstrap: bool = True) -> pd.DataFrame:
    """The long cells table: per cell and metric, seed statistics and paired comparisons."""
    sched_rank = {s: i for i, s in enumerate(schedule_order(trials["schedule"].unique()))}
    base_schedules = {None if _null(s) else s for s in cells.loc[cells["is_baseline"], "schedule"]}
    groups = dict(tuple(trials.groupby("cell")))
    usable = trials[trials["status"] == "completed"]
    rows = []
    for metric in metrics_present(trials):
        vals = usable[["cell", "schedule", "seed", metric]].rename(columns={metric: "value"})
        vals = vals[np.isfinite(vals["value"].to_numpy(dtype=float))].drop_duplicates(["cell", "seed"])
        by_cell = {c: dict(zip(g["seed"], g["value"])) for c, g in vals.groupby("cell")}
        base_by_sched, base_by_seed = _baseline_values(vals, cells, sched_rank)
        family = []
        for cid, cell in cells.iterrows():
            group = groups.get(cid, trials.iloc[:0])
            seeds = by_cell.get(cid, {})
            desc = stats.describe(list(seeds.values()), bootstrap=bootstrap)
            notes = [desc.pop("note"), _status_note(group)]
            n_nonfinite = int(((group["status"] == "completed") & group[metric].isna()).sum())
            if n_nonfinite:
                notes.append(f"{n_nonfinite} completed without finite {metric}")
            row = {**cell.to_dict(), "metric": metric, "n_trials": len(group),
                   "n_excluded": int((group["status"] != "completed").sum()), **desc}
            if cell["is_baseline"]:
                notes.insert(0, "baseline")
            else:
                grid = _null(cell["comparator"])
                sched = None if _null(cell["schedule"]) else cell["schedule"]
                if grid and sched in base_schedules:
                    base = base_by_sched.get(sched, {})
                else:
                    base = base_by_seed
                    if grid:
                        notes.append("baseline taken from another schedule")
                x, y, paired = stats.pair(seeds, base)
                comp = stats.paired_comparison(x, y)
                if seeds and 0 < len(paired) < len(seeds):
                    notes.append(f"paired on {len(paired)} of {len(seeds)} seeds")
                notes.append(comp.pop("note"))
                comp["seeds_2pct"] = stats.seeds_needed(comp["ratio_std"])
                if 0 < comp["n_paired"] < stats.MIN_SEEDS_FOR_RANKS and np.isfinite(comp["seeds_2pct"]):
                    notes.append(f"~{comp['seeds_2pct']:.0f} seeds would detect a 2% ratio at 80% power")
                row.update(comp)
                family.append(len(rows))
            row["note"] = "; ".join(n for n in notes if n)
            rows.append(row)
        if family:
            for col, out in (("p_ttest", "p_holm"), ("p_wilcoxon", "p_wilcoxon_holm")):
                adjusted = stats.holm([rows[i].get(col, np.nan) for i in family])
                for i, p in zip(family, adjusted):
                    rows[i][out] = p
    out = pd.DataFrame(rows)
    for col in CELL_COLUMNS:
        if col not in out:
            out[col] = np.nan
    out = out[list(CELL_COLUMNS)]
    for col in ("n_trials", "n_excluded", "n_seeds", "n_paired"):
        out[col] = out[col].astype("Int64")
    return out


# --------------------------------------------------------------------------------------------
# vectorised reductions of the big tables


def _run_map(trials: pd.DataFrame, runs: pd.Series, on: str) -> pd.DataFrame:
    """(run code, cell, seed) for every completed trial whose ``on`` id is a category of ``runs``."""
    ok = trials[trials["status"] == "completed"]
    codes = pd.Categorical(ok[on], categories=runs.cat.categories).codes
    out = pd.DataFrame({"_run": codes, "cell": ok["cell"].to_numpy(),
                        "seed": ok["seed"].to_numpy(dtype="int64", na_value=-1)})
    return out[out["_run"] >= 0].drop_duplicates(["cell", "seed"])


def _with_cells(df: pd.DataFrame, trials: pd.DataFrame, dedupe: list[str]) -> pd.DataFrame:
    """Rows of a per-trial table keyed to (cell, seed) through their run (one copy per run)."""
    on = "run_trial_id" if "run_trial_id" in df else "trial_id"
    runs = df[on].astype("category")
    df = df.drop(columns=[c for c in ("trial_id", "run_trial_id") if c in df])
    df["_run"] = runs.cat.codes.to_numpy()
    df = df.drop_duplicates(["_run", *dedupe])
    return df.merge(_run_map(trials, runs, on), on="_run", how="inner").drop(columns="_run")


def _moments(df: pd.DataFrame, by: list[str], quantities, name: str) -> pd.DataFrame:
    """Long table of n_seeds, mean, std, sem and t interval per group and quantity."""
    values = df[list(quantities)].astype(float)
    values = values.where(np.isfinite(values.to_numpy()))
    grouped = pd.concat([df[by], values], axis=1).groupby(by, sort=True, observed=True)
    agg = grouped.agg(["mean", "std", "count"])
    parts = []
    for q in quantities:
        part = agg[q].reset_index()
        part.insert(len(by), name, q)
        part = part.rename(columns={"count": "n_seeds"})
        sem, low, high = stats.t_interval_from_moments(part["mean"], part["std"], part["n_seeds"])
        part["sem"], part["ci_low"], part["ci_high"] = sem, low, high
        parts.append(part[part["n_seeds"] > 0])
    out = pd.concat(parts, ignore_index=True)
    return out[[*by, name, *MOMENT_COLUMNS]]


def _label_cells(df: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    meta = cells[list(KEYS)]
    out = meta.iloc[df["cell"].to_numpy()].reset_index(drop=True)
    return pd.concat([out, df.drop(columns="cell").reset_index(drop=True)], axis=1)


def layer_statistics(layers: pd.DataFrame | None, trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, layer, quantity) mean and CI over seeds at each trial's last step."""
    quantities = [q for q in LAYER_QUANTITIES if layers is not None and q in layers]
    if layers is None or not quantities:
        return pd.DataFrame(columns=[*KEYS, "layer", "quantity", *MOMENT_COLUMNS])
    df = _with_cells(layers, trials, ["step", "layer"])
    last = df.groupby(["cell", "seed"])["step"].transform("max")
    df = df[df["step"] == last].drop_duplicates(["cell", "seed", "layer"])
    out = _moments(df, ["cell", "layer"], quantities, "quantity")
    return _label_cells(out, cells)


def curve_statistics(steps: pd.DataFrame | None, trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, split, step, metric) mean and CI over seeds of the loss and ppl curves."""
    metrics = [m for m in CURVE_METRICS if steps is not None and m in steps]
    if steps is None or not metrics:
        return pd.DataFrame(columns=[*KEYS, "split", "step", "metric", *MOMENT_COLUMNS])
    df = _with_cells(steps, trials, ["split", "step"])
    df = df.drop_duplicates(["cell", "seed", "split", "step"])
    out = _moments(df, ["cell", "split", "step"], metrics, "metric")
    out["split"] = out["split"].astype(str)
    return _label_cells(out, cells)


# --------------------------------------------------------------------------------------------
# writing and the terminal table


def _write(df: pd.DataFrame, uri: str) -> None:
    frame = df.copy()
    for col in frame.columns:
        if frame[col].dtype == object or isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    lio.write_parquet(pa.Table.from_pandas(frame, preserve_index=False), uri)


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _fmt_p(p) -> str:
    if p is None or not np.isfinite(p):
        return "-"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def headline_rows(cells: pd.DataFrame, metric: str = "eval_ppl") -> pd.DataFrame:
    """The rows of one metric for display; identical baseline rows (one shared run) collapsed."""
    rows = cells[cells["metric"] == metric].copy()
    rows["label"] = [label(*k) for k in rows[list(KEYS)].itertuples(index=False)]
    base = rows[rows["is_baseline"]]
    if len(base) > 1 and base[["n_seeds", "mean", "std"]].astype(float).round(12).drop_duplicates().shape[0] == 1:
        keep = base.index[0]
        rows = rows.drop(index=base.index[1:])
        rows.loc[keep, "label"] = f"{base['configuration'].iloc[0]} (all schedules)"
    return rows.reset_index(drop=True)


def terminal_table(cells: pd.DataFrame, baseline: str, excluded: pd.DataFrame) -> str:
    rows = headline_rows(cells)
    table = [("cell", "n", "eval_ppl", "95% CI", "ratio", "ratio 95% CI", "p_holm", "d_z", "note")]
    for r in rows.itertuples(index=False):
        ratio = "baseline" if r.is_baseline else _fmt(r.ratio_mean, 3)
        ratio_ci = "" if r.is_baseline else f"[{_fmt(r.ratio_ci_low, 3)}, {_fmt(r.ratio_ci_high, 3)}]"
        table.append((r.label, str(r.n_seeds), _fmt(r.mean), f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]",
                      ratio, ratio_ci, _fmt_p(r.p_holm), _fmt(r.d_z),
                      "" if r.is_baseline else str(r.note)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [f"eval_ppl against baseline {baseline!r} (same seed; p: paired t-test, Holm)"]
    for j, row in enumerate(table):
        cols = (v.ljust(w) if i in (0, len(row) - 1) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
        lines.append("  ".join(cols).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    if len(excluded):
        counts = excluded["reason"].value_counts().sort_index()
        lines.append(f"excluded {len(excluded)} trial(s): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# entry point


def aggregate(sweep_uri: str, baseline: str | None = None, report: bool = True,
              echo: Callable[[str], object] = print, partial: str | None = None) -> dict:
    """Aggregate ``<sweep_uri>/results`` into ``<sweep_uri>/summary``; see the module docstring.

    partial: why the results are incomplete (a sweep still running); shown on the table and report.

    Returns {"cells", "layers", "curves", "excluded" (DataFrames), "baseline" (str),
    "report" (URI of report.html or None), "provenance" (dict), "written" and "removed" (URIs),
    "notes" (dict: section -> why it has no data)}.
    Raises AggregateError for user errors (no results, unknown baseline).
    """
    from orchestrator.analysis import provenance

    results = lio.join(sweep_uri, "results")
    summary = lio.join(sweep_uri, "summary")
    trials = load_trials(sweep_uri)
    base = resolve_baseline(trials, baseline)
    cells = cell_table(trials, base)
    trials = _attach_cells(trials, cells)
    excluded = excluded_trials(trials)
    cell_stats = cell_statistics(trials, cells)
    prov = provenance.collect(sweep_uri, _read(lio.join(results, "trials.parquet"), provenance.COLUMNS).to_pandas(),
                              len(excluded))

    notes: dict[str, str] = {"partial": partial} if partial else {}
    from orchestrator.analysis.search_note import report_note

    if search_note := report_note(sweep_uri):  # a search sweep's confirmation (orchestrator/analysis/search_note.py)
        notes["search"] = search_note
    ids = ("trial_id", "run_trial_id")
    layers = _optional_frame(lio.join(results, "layers.parquet"),
                             ids + ("step", "layer") + LAYER_QUANTITIES, ("trial_id", "step", "layer"),
                             notes, "layers")
    layer_stats = layer_statistics(layers, trials, cells)
    del layers
    steps = _optional_frame(lio.join(results, "steps.parquet"),
                            ids + ("split", "step") + CURVE_METRICS, ("trial_id", "split", "step"),
                            notes, "steps")
    curves = curve_statistics(steps, trials, cells)
    del steps

    written = []
    for df, name in ((cell_stats, "cells"), (layer_stats, "layers"), (curves, "curves"), (excluded, "excluded")):
        written.append(lio.join(summary, f"{name}.parquet"))
        _write(df, written[-1])
    written.append(provenance.write(summary, prov))

    report_uri, removed = None, []
    if report:
        from orchestrator.analysis import report as rep

        picks = rep.pick_attention_trials(trials, cells, base)
        attention = _load_attention(results, picks, notes)
        report_uri = rep.write_report(
            summary, rep.ReportInput(
                sweep_uri=sweep_uri, baseline=base, trials=trials, cells=cells, cell_stats=cell_stats,
                layers=layer_stats, curves=curves, excluded=excluded, attention=attention,
                attention_picks=picks, notes=notes, provenance=prov))
    else:  # an older report would contradict the tables just written
        removed = [uri for uri in (lio.join(summary, f) for f in REPORT_FILES) if lio.exists(uri)]
        for uri in removed:
            lio.delete(uri)
    if partial:
        echo(f"PARTIAL RESULTS: {partial}")
    echo(terminal_table(cell_stats, base, excluded))
    echo("wrote: " + ", ".join(written))
    if removed:
        echo("removed the stale report (it no longer matched these tables): " + ", ".join(removed))
    if report_uri:
        echo(f"report: {report_uri}")
    return {"cells": cell_stats, "layers": layer_stats, "curves": curves, "excluded": excluded,
            "baseline": base, "report": report_uri, "provenance": prov, "written": written,
            "removed": removed, "notes": notes}


def _load_attention(results: str, picks: list[dict], notes: dict) -> pd.DataFrame | None:
    """The attention rows of the picked trials only (the file can be large)."""
    uri = lio.join(results, "attention.parquet")
    if not picks:
        notes["attention"] = "no trial to show attention for"
        return None
    wanted = ("trial_id", "run_trial_id", "layer", "query", "key", "weight", "token")
    try:
        if not lio.exists(uri):
            notes["attention"] = f"no attention data ({uri} is absent)"
            return None
        fs, path = lio.resolve(uri)
        names = pads.dataset(path, filesystem=fs, format="parquet").schema.names
        ids = sorted({p["trial_id"] for p in picks} | {p["run_trial_id"] for p in picks})
        expr = pc.field("trial_id").isin(ids)
        if "run_trial_id" in names:
            expr = expr | pc.field("run_trial_id").isin(ids)
        table = _read(uri, wanted, ("trial_id", "layer", "query", "key", "weight"), expr)
    except AggregateError as exc:
        notes["attention"] = str(exc)
        return None
    if table is None or table.num_rows == 0:
        notes["attention"] = "no attention rows for the picked trials"
        return None
    df = table.to_pandas()
    for col in ("trial_id", "run_trial_id"):
        if col in df:
            df[col] = df[col].astype(object)
    return df
