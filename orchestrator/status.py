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
               "node": "", "error": ""}
        names = io.listdir(d)
        row["attempts"] = len(io.listdir(io.join(d, "attempts"))) if "attempts" in names else 0
        if "trial.parquet" in names:
            r = io.read_parquet(io.join(d, "trial.parquet")).to_pylist()[0]
            row.update(state=r["status"], step=r["final_step"], eval_ppl=r["eval_ppl"], wall_s=r["wall_s"],
                       node=(r.get("node_id") or "")[:8], error=r.get("error") or "")
        elif "stopped.json" in names:  # a search trial the scheduler stopped early
            r = _json(io.join(d, "stopped.json")) or {}
            row.update(state="stopped", step=r.get("step", 0), eval_ppl=r.get("eval_ppl", float("nan")))
        else:
            prog = _json(io.join(d, "progress.json")) if "progress.json" in names else None
            err = _json(io.join(d, "error.json")) if "error.json" in names else None
            if prog:
                row.update(step=prog["step"], eta_s=prog.get("eta_s"), updated=prog.get("time"))
            if err:
                row["error"] = err["error"]
                row["state"] = "errored" if err.get("final") else "retrying"
                if not err.get("final") and prog and prog.get("attempt", 0) > err["attempt"]:
                    row["state"] = "running"
            elif row["attempts"]:
                row["state"] = "running"
        rows.append(row)
    return pd.DataFrame(rows)


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
    cols = ["run_id", "cells", "state", "step", "steps", "eval_ppl", "attempts", "wall_s", "node", "error"]
    show = df[cols].copy()
    show["error"] = show["error"].str.slice(0, 60)
    return show.to_string(index=False, float_format=lambda x: f"{x:.2f}")
