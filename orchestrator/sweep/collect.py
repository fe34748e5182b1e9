"""Consolidate every trial's Parquet into results/{trials,steps,layers,attention}.parquet.

One row per grid cell x seed (and comparator x seed): a deduplicated cell carries the result
of the run that stood for it, with run_trial_id naming that run. Rerunning gives the same files.
"""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa

from localist import faults, io, trial_files
from localist.outputs import SCHEMAS, trial_row
from orchestrator import layout
from orchestrator.spec import SweepSpec, Trial

KINDS = tuple(SCHEMAS)  # steps, layers, attention


def _coords(spec: SweepSpec, t: Trial) -> dict:
    c = {"trial_id": t.trial_id, "run_trial_id": t.run_id, "deduplicated": t.run_id != t.trial_id}
    for axis in spec.axes:
        c[axis] = t.coords.get(axis)
    c.setdefault("configuration", t.coords.get("configuration"))
    c.setdefault("schedule", t.coords.get("schedule"))
    c["comparator"] = t.comparator
    c["seed"] = t.seed
    if spec.search:  # a confirm trial: which searched setting it reruns (1 = best)
        c["search_rank"] = t.rank
    return c


def _missing(t: Trial, error: dict | None) -> dict:
    """The row of a run with no result: errored once every retry failed; until then (or if cut short) missing."""
    status = "errored" if error and error.get("final") else "missing"
    return trial_row(t.run_id, t.config, {"status": status, "error": error["error"] if error else None,
                                          "eval_loss": math.nan, "eval_ppl": math.nan})


def _read_run(sweep_uri: str, run_id: str, names: dict[str, int]) -> tuple[dict | None, dict | None, dict]:
    """One run's result row (or None) and error record (or None), and the row tables it wrote, by the
    names a listing found."""
    d = layout.trial_dir(sweep_uri, run_id)
    tables = {k: io.read_parquet(io.join(d, trial_files.ROWS[k])).drop_columns(["trial_id"])
              for k in KINDS if trial_files.ROWS[k] in names}
    result = trial_files.read_result(d) if trial_files.TRIAL in names else None
    error = trial_files.read_error(d) if result is None and trial_files.ERROR in names else None
    return result, error, tables


def collect(spec: SweepSpec, trials: list[Trial], sweep_uri: str | None = None) -> dict[str, int]:
    """trials/ is listed once and each run's files are read on a thread pool (a run that stands for
    several cells is read once), so thousands of runs collect in seconds, on S3 too."""
    sweep_uri = sweep_uri or spec.uri
    listing = trial_files.by_trial(io.list_files(layout.trials_dir(sweep_uri)))
    run_ids = list(dict.fromkeys(t.run_id for t in trials))
    read = dict(zip(run_ids, io.map_threads(lambda r: _read_run(sweep_uri, r, listing.get(r, {})), run_ids)))
    rows, parts = [], {k: [] for k in KINDS}
    for t in trials:
        coords = _coords(spec, t)
        result, error, tables = read[t.run_id]
        row = dict(result) if result is not None else _missing(t, error)
        row.pop("trial_id", None)
        rows.append({**coords, **row})
        for kind, table in tables.items():
            parts[kind].append((coords, table))
    trials_df = pd.DataFrame(rows)
    io.write_parquet(pa.Table.from_pandas(trials_df, preserve_index=False), layout.results_file(sweep_uri, "trials"))
    faults.crash_point("collect")
    front = list(_coords(spec, trials[0]))
    for kind in KINDS:
        io.write_parquet(_with_coords(parts[kind], front), layout.results_file(sweep_uri, kind))
    return trials_df["status"].value_counts().to_dict()


def _with_coords(parts: list[tuple[dict, pa.Table]], front: list[str]) -> pa.Table:
    """One table of every run's rows, each row led by its cell's coordinates (Arrow throughout:
    thousands of runs' rows are concatenated without a pandas frame per run)."""
    if not parts:
        return pa.table({c: pa.array([], pa.null()) for c in front})
    coords = pa.Table.from_pylist([c for c, t in parts for _ in range(t.num_rows)])
    rows = pa.concat_tables([t for _, t in parts], promote_options="default")
    for name in reversed(front):
        rows = rows.add_column(0, name, coords.column(name)) if name not in rows.column_names else rows
    return rows.select(front + [c for c in rows.column_names if c not in front])
