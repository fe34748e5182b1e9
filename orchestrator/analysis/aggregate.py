"""Aggregate a sweep's consolidated results into seed statistics, a summary and a report.

``aggregate`` is the entry point (the CLI, the driver and search sweeps call it). It reads
``results/`` (``orchestrator.analysis.tables``), builds the cells (``orchestrator.analysis.cells``),
computes the statistics here and writes ``summary/`` (file names from ``orchestrator.layout``):

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

from collections.abc import Callable

import numpy as np
import pandas as pd

from localist import io as lio
from orchestrator import layout
from orchestrator.analysis import provenance, stats, tables
from orchestrator.analysis.cells import (KEYS, attach_cells, cell_table, focus_configuration, is_null,
                                         resolve_baseline, schedule_order)
from orchestrator.analysis.errors import AggregateError  # noqa: F401 (callers import it from here)
from orchestrator.analysis.formatting import terminal_table
from orchestrator.analysis.report_input import ReportInput, pick_attention_trials
from orchestrator.analysis.search_note import report_note
from orchestrator.analysis.tables import CURVE_METRICS, LAYER_QUANTITIES, METRICS, POSITION_METRICS, ZERO_SHOT_METRICS

CELL_COLUMNS = (
    "configuration", "schedule", "comparator", "metric", "peak", "is_baseline", "n_trials",
    "n_excluded", "n_seeds", "mean", "std", "sem", "ci_low", "ci_high", "boot_low", "boot_high",
    "n_paired", "mean_diff", "diff_ci_low", "diff_ci_high", "ratio_mean", "ratio_ci_low",
    "ratio_ci_high", "ratio_std", "seeds_2pct", "p_ttest", "p_wilcoxon", "p_holm",
    "p_wilcoxon_holm", "d_z", "note",
)
MOMENT_COLUMNS = ("n_seeds", "mean", "std", "sem", "ci_low", "ci_high")


# --------------------------------------------------------------------------------------------
# which trials count


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
    by_sched = {None if is_null(s) else s: dict(zip(g["seed"], g["value"]))
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
    """eval_ppl, eval_loss, and the per-position and step-0 (zero-shot) figures some trial recorded.
    Each is its own Holm family: the step-0 ratios compare the starting model under each cell's
    locality with the baseline's, seed by seed, as the fine-tuned ones do."""
    return list(METRICS) + [m for m in POSITION_METRICS + ZERO_SHOT_METRICS
                            if m in trials and np.isfinite(trials[m].to_numpy(dtype=float)).any()]


def cell_statistics(trials: pd.DataFrame, cells: pd.DataFrame, bootstrap: bool = True) -> pd.DataFrame:
    """The long cells table: per cell and metric, seed statistics and paired comparisons."""
    sched_rank = {s: i for i, s in enumerate(schedule_order(trials["schedule"].unique()))}
    base_schedules = {None if is_null(s) else s for s in cells.loc[cells["is_baseline"], "schedule"]}
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
                grid = is_null(cell["comparator"])
                sched = None if is_null(cell["schedule"]) else cell["schedule"]
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
    trials = tables.load_trials(sweep_uri)
    base = resolve_baseline(trials, baseline)
    cells = cell_table(trials, base)
    trials = attach_cells(trials, cells)
    excluded = excluded_trials(trials)
    cell_stats = cell_statistics(trials, cells)
    prov = provenance.collect(sweep_uri, tables.load_trial_columns(sweep_uri, provenance.COLUMNS), len(excluded))

    notes: dict[str, str] = {"partial": partial} if partial else {}
    if search_note := report_note(sweep_uri):  # a search sweep's confirmation
        notes["search"] = search_note
    layers = tables.load_layers(sweep_uri, notes)
    layer_stats = layer_statistics(layers, trials, cells)
    del layers
    steps = tables.load_steps(sweep_uri, notes)
    curves = curve_statistics(steps, trials, cells)
    del steps

    written = []
    for df, name in ((cell_stats, "cells"), (layer_stats, "layers"), (curves, "curves"), (excluded, "excluded")):
        written.append(layout.summary_table(sweep_uri, name))
        tables.write_table(df, written[-1])
    written.append(provenance.write(sweep_uri, prov))

    report_uri, removed = None, []
    if report:
        from orchestrator.analysis import report as rep  # here: matplotlib is loaded only to draw a report

        focus = focus_configuration(cells, base)
        picks = pick_attention_trials(trials, base, focus)
        attention = tables.load_attention(sweep_uri, picks, notes)
        report_uri = rep.write_report(ReportInput(
            sweep_uri=sweep_uri, baseline=base, trials=trials, cells=cells, cell_stats=cell_stats,
            layers=layer_stats, curves=curves, excluded=excluded, attention=attention,
            attention_picks=picks, notes=notes, provenance=prov, focus=focus))
    else:  # an older report would contradict the tables just written
        old = [layout.report_file(sweep_uri), *(layout.figure_file(sweep_uri, f) for f in layout.REPORT_FIGURES)]
        removed = [uri for uri in old if lio.exists(uri)]
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
