"""Parquet in and out: reading a sweep's consolidated results and writing its summary tables.

Reads ``results/{trials,steps,layers,attention}.parquet`` (paths from ``orchestrator.layout``;
only ``trials`` is required) with just the columns analysis uses, and says in ``notes`` why an
optional table gave nothing instead of failing. The column names the results must or may carry
are declared here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from localist import io as lio
from localist.outputs import STEP0_PREFIX
from orchestrator import layout
from orchestrator.analysis.cells import KEYS, PEAK
from orchestrator.analysis.errors import AggregateError

METRICS = ("eval_ppl", "eval_loss")  # a trial is usable only with both finite
POSITION_METRICS = ("eval_loss_pos1", "eval_loss_pos2_4", "eval_loss_pos5p")  # optional, by block position
# optional: the same at step 0, before any update (the starting model under the trial's locality)
ZERO_SHOT_METRICS = tuple(STEP0_PREFIX + m for m in ("eval_ppl", "eval_loss", *POSITION_METRICS))
LAYER_QUANTITIES = ("lambda", "entropy_bits", "entropy_norm", "in_block_mass")
CURVE_METRICS = ("loss", "ppl")
TRIAL_REQUIRED = ("trial_id", "configuration", "schedule", "comparator", "seed", "status",
                  "eval_loss", "eval_ppl")
TRIAL_OPTIONAL = ("run_trial_id", "error", "locality.peak") + POSITION_METRICS + ZERO_SHOT_METRICS
RUN_IDS = ("trial_id", "run_trial_id")


def read_table(uri: str, columns: tuple[str, ...], required: tuple[str, ...] = (),
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
        table = read_table(uri, columns, required)
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
    """One row per trial id with clean labels, lower-case status and NaN for non-finite metrics."""
    uri = layout.results_file(sweep_uri, "trials")
    table = read_table(uri, TRIAL_REQUIRED + TRIAL_OPTIONAL, TRIAL_REQUIRED)
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
    for m in METRICS + tuple(p for p in POSITION_METRICS + ZERO_SHOT_METRICS if p in df):
        df[m] = pd.to_numeric(df[m], errors="coerce").astype(float)
        df.loc[~np.isfinite(df[m]), m] = np.nan
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    # a comparator row is one with a comparator name, whatever else it carries
    comp = df["comparator"].notna()
    df.loc[comp, ["configuration", "schedule"]] = None
    return df.drop_duplicates("trial_id", keep="last").reset_index(drop=True)


def load_trial_columns(sweep_uri: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """results/trials.parquet as collected, untouched: the wanted columns that exist."""
    return read_table(layout.results_file(sweep_uri, "trials"), columns).to_pandas()


def load_layers(sweep_uri: str, notes: dict) -> pd.DataFrame | None:
    """The per-layer rows (``LAYER_QUANTITIES`` by trial, step and layer), or None with a note."""
    return _optional_frame(layout.results_file(sweep_uri, "layers"),
                           RUN_IDS + ("step", "layer") + LAYER_QUANTITIES, ("trial_id", "step", "layer"),
                           notes, "layers")


def load_steps(sweep_uri: str, notes: dict) -> pd.DataFrame | None:
    """The curve rows (``CURVE_METRICS`` by trial, split and step), or None with a note."""
    return _optional_frame(layout.results_file(sweep_uri, "steps"),
                           RUN_IDS + ("split", "step") + CURVE_METRICS, ("trial_id", "split", "step"),
                           notes, "steps")


def load_attention(sweep_uri: str, picks: list[dict], notes: dict) -> pd.DataFrame | None:
    """The attention rows of the picked trials only (the file can be large)."""
    uri = layout.results_file(sweep_uri, "attention")
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
        table = read_table(uri, wanted, ("trial_id", "layer", "query", "key", "weight"), expr)
    except AggregateError as exc:
        notes["attention"] = str(exc)
        return None
    if table is None or table.num_rows == 0:
        notes["attention"] = "no attention rows for the picked trials"
        return None
    df = table.to_pandas()
    for col in RUN_IDS:
        if col in df:
            df[col] = df[col].astype(object)
    return df


def write_table(df: pd.DataFrame, uri: str) -> None:
    """Write a summary table as Parquet; labels as plain strings, missing ones as null."""
    frame = df.copy()
    for col in frame.columns:
        if frame[col].dtype == object or isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    lio.write_parquet(pa.Table.from_pandas(frame, preserve_index=False), uri)
