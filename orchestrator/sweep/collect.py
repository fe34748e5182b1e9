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


def _outcome(sweep_uri: str, t: Trial) -> dict:
    d = layout.trial_dir(sweep_uri, t.run_id)
    if trial_files.has_result(d):
        return trial_files.read_result(d)
    e = trial_files.read_error(d)
    error, status = None, "missing"
    if e is not None:  # errored once every retry failed; until then (or if cut short) missing
        error, status = e["error"], "errored" if e.get("final") else "missing"
    return trial_row(t.run_id, t.config, {"status": status, "error": error, "eval_loss": math.nan,
                                          "eval_ppl": math.nan})


def collect(spec: SweepSpec, trials: list[Trial], sweep_uri: str | None = None) -> dict[str, int]:
    sweep_uri = sweep_uri or spec.uri
    rows, parts = [], {k: [] for k in KINDS}
    cache: dict[str, dict[str, pd.DataFrame]] = {}
    for t in trials:
        coords = _coords(spec, t)
        row = _outcome(sweep_uri, t)
        row.pop("trial_id", None)
        rows.append({**coords, **row})
        if t.run_id not in cache:
            d = layout.trial_dir(sweep_uri, t.run_id)
            cache[t.run_id] = {k: io.read_parquet(io.join(d, trial_files.ROWS[k])).to_pandas()
                               for k in KINDS if io.exists(io.join(d, trial_files.ROWS[k]))}
        for kind, df in cache[t.run_id].items():
            df = df.drop(columns=["trial_id"])
            parts[kind].append(df.assign(**coords))
    trials_df = pd.DataFrame(rows)
    io.write_parquet(pa.Table.from_pandas(trials_df, preserve_index=False), layout.results_file(sweep_uri, "trials"))
    faults.crash_point("collect")
    for kind in KINDS:
        df = pd.concat(parts[kind], ignore_index=True) if parts[kind] else pd.DataFrame(columns=list(_coords(spec, trials[0])))
        front = list(_coords(spec, trials[0]))
        df = df[front + [c for c in df.columns if c not in front]]
        io.write_parquet(pa.Table.from_pandas(df, preserve_index=False), layout.results_file(sweep_uri, kind))
    return trials_df["status"].value_counts().to_dict()
