"""What each run of a sweep is doing, read from the files trials write (works during and after)."""

from __future__ import annotations

import json
import time

import pandas as pd

from localist import io
from orchestrator import layout
from orchestrator.spec import Trial

STATES = ("completed", "diverged", "stopped", "errored", "running", "retrying", "pending")


def _json(uri: str) -> dict | None:
    try:
        return json.loads(io.read_text(uri))
    except (OSError, ValueError):
        return None


def run_states(sweep_uri: str, trials: list[Trial]) -> pd.DataFrame:
    rows = []
    stands_for: dict[str, int] = {}
    for t in trials:
        stands_for[t.run_id] = stands_for.get(t.run_id, 0) + 1
    for t in trials:
        if t.run_id != t.trial_id:
            continue
        d = layout.trial_dir(sweep_uri, t.trial_id)
        row = {"run_id": t.trial_id, "cells": stands_for[t.trial_id], "state": "pending", "step": 0,
               "steps": t.config.train.steps, "eval_ppl": float("nan"), "attempts": 0, "wall_s": float("nan"),
               "node": "", "error": "", "eval_loss": float("nan"), "eval_step": 0, "loss": float("nan"),
               "tokens_per_s": float("nan"), "eta_s": float("nan")}
        names = io.listdir(d)
        row["attempts"] = len(io.listdir(io.join(d, "attempts"))) if "attempts" in names else 0
        if "trial.parquet" in names:
            r = io.read_parquet(io.join(d, "trial.parquet")).to_pylist()[0]
            row.update(state=r["status"], step=r["final_step"], eval_ppl=r["eval_ppl"], wall_s=r["wall_s"],
                       node=(r.get("node_id") or "")[:8], error=r.get("error") or "", eval_loss=r["eval_loss"],
                       eval_step=r["final_step"], tokens_per_s=r["tokens_per_s"], eta_s=0.0)
        elif "stopped.json" in names:  # a search trial the scheduler stopped early
            r = _json(io.join(d, "stopped.json")) or {}
            row.update(state="stopped", step=r.get("step", 0), eval_ppl=r.get("eval_ppl", float("nan")))
        else:
            prog = _json(io.join(d, "progress.json")) if "progress.json" in names else None
            err = _json(io.join(d, "error.json")) if "error.json" in names else None
            if prog:
                row.update(step=prog["step"], eta_s=prog.get("eta_s"), updated=prog.get("time"),
                           loss=prog.get("loss"), tokens_per_s=prog.get("tokens_per_s"))
            if "steps.parquet" in names:
                row.update(_latest_eval(io.join(d, "steps.parquet")))
            if err:
                row["error"] = err["error"]
                row["state"] = "errored" if err.get("final") else "retrying"
                if not err.get("final") and prog and prog.get("attempt", 0) > err["attempt"]:
                    row["state"] = "running"
            elif row["attempts"]:
                row["state"] = "running"
        rows.append(row)
    return pd.DataFrame(rows)


def _latest_eval(steps_uri: str) -> dict:
    """The newest evaluation a trial has written so far (the trainer rewrites steps.parquet at each)."""
    try:
        rows = [r for r in io.read_parquet(steps_uri).to_pylist() if r["split"] == "eval"]
    except (OSError, ValueError):  # pyarrow's errors for a file replaced while read
        return {}
    if not rows:
        return {}
    last = max(rows, key=lambda r: r["step"])
    return {"eval_loss": last["loss"], "eval_ppl": last["ppl"], "eval_step": last["step"]}


def counts(df: pd.DataFrame) -> dict[str, int]:
    return {s: int((df["state"] == s).sum()) for s in STATES}


def eta_seconds(df: pd.DataFrame, concurrency: int) -> float | None:
    """Remaining time: mean wall time of finished runs x runs left / concurrency."""
    finished = df[df["state"].isin(["completed", "diverged"])]
    if finished.empty:
        return None
    left = int((~df["state"].isin(["completed", "diverged", "stopped", "errored"])).sum())
    return float(finished["wall_s"].mean()) * left / max(concurrency, 1)


def summary_line(df: pd.DataFrame, concurrency: int, started: float | None = None) -> str:
    c = counts(df)
    done = c["completed"] + c["diverged"] + c["stopped"]
    parts = [f"{done}/{len(df)} runs done", f"{c['running']} running", f"{c['pending']} pending"]
    if c["retrying"]:
        parts.append(f"{c['retrying']} retrying")
    if c["errored"] or c["diverged"]:
        parts.append(f"{c['errored']} errored, {c['diverged']} diverged")
    if c["stopped"]:
        parts.append(f"{c['stopped']} stopped early")
    eta = eta_seconds(df, concurrency)
    if eta is not None and done < len(df):
        parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
    if started:
        parts.append(f"elapsed {time.strftime('%H:%M:%S', time.gmtime(time.time() - started))}")
    return " | ".join(parts)


def table(df: pd.DataFrame) -> str:
    cols = ["run_id", "cells", "state", "step", "steps", "eval_loss", "eval_step", "eval_ppl", "attempts", "wall_s",
            "node", "error"]
    show = df[cols].copy()
    show["error"] = show["error"].str.slice(0, 60)
    return show.to_string(index=False, float_format=lambda x: f"{x:.2f}")


def collect_unfinished(sweep_uri: str) -> str | None:
    """For a sweep folder whose runs are not all final (still running, or stopped): collect what the
    trials have written so far into results/ and say how partial it is. None for a finished sweep or
    a folder that is not a sweep (then results/ is used as it is)."""
    from orchestrator import driver
    from orchestrator.collect import collect

    if not io.exists(layout.spec_file(sweep_uri)):
        return None
    spec = driver.load_saved(sweep_uri)
    trials = driver.trials_of(spec, sweep_uri, sweep_uri, check_paths=False)
    if not trials:  # a search that has not chosen what to confirm yet: nothing to summarise
        return None
    df = run_states(sweep_uri, trials)
    c = counts(df)
    open_runs = c["running"] + c["retrying"] + c["pending"]
    if not open_runs:
        return None
    collect(spec, trials, sweep_uri)
    return (f"{len(df) - open_runs} of {len(df)} runs finished ({c['running']} running, {c['pending']} pending); "
            "unfinished runs are left out")


def all_trials(spec, sweep_uri: str) -> list[Trial]:
    """Every run `status` and `watch` show: a search's trials, then the grid or confirmation."""
    from orchestrator import driver

    trials = driver.trials_of(spec, sweep_uri, sweep_uri, check_paths=False)
    if spec.search:
        from orchestrator.search_run import search_trials

        trials = search_trials(spec, sweep_uri) + trials
    return trials
