"""What each run of a sweep is doing, read from the files trials write (works during and after).

Plain lists of dicts, no pandas: `localist sweep status` is asked often and should answer in
well under two seconds, so it imports only pyarrow (to read each run's trial.parquet).
"""

from __future__ import annotations

import json
import os
import time

from localist import io, trial_files
from orchestrator import layout
from orchestrator.spec import Trial, load_saved

STATUS_COLUMNS = ["status", "final_step", "eval_loss", "eval_ppl", "tokens_per_s", "wall_s", "node_id", "error"]
STATES = ("completed", "diverged", "stopped", "errored", "running", "retrying", "pending")
FINAL = ("completed", "diverged", "stopped", "errored")


def _json(uri: str) -> dict | None:
    try:
        return json.loads(io.read_text(uri))
    except (OSError, ValueError):
        return None


def run_states(sweep_uri: str, trials: list[Trial], known: dict[str, dict] | None = None) -> list[dict]:
    """One row per run. The trials/ folder is listed once (not once per run); a run that is final in
    `known` (default: the driver's snapshot, status.json) with the same files as then is taken from
    it, and only the others' records are read, on a thread pool: thousands of runs answer in seconds,
    on S3 too."""
    stands_for: dict[str, int] = {}
    for t in trials:
        stands_for[t.run_id] = stands_for.get(t.run_id, 0) + 1
    listing = trial_files.by_trial(io.list_files(layout.trials_dir(sweep_uri)))
    known = read_snapshot(sweep_uri) if known is None else known

    def one(t: Trial) -> dict:
        names = listing.get(t.trial_id, {})
        files = sorted(f"{k}:{v}" for k, v in names.items())
        old = known.get(t.trial_id)
        if old and old["state"] in FINAL and old.get("files") == files:
            return {**old, "cells": stands_for[t.trial_id]}
        return {**_run_state(sweep_uri, t, stands_for[t.trial_id], names), "files": files}

    return io.map_threads(one, [t for t in trials if t.run_id == t.trial_id])


def read_snapshot(sweep_uri: str) -> dict[str, dict]:
    """The driver's last snapshot of the runs (status.json), by run id; {} if none or unreadable."""
    snap = _json(layout.status_file(sweep_uri)) or {}
    return {r["run_id"]: r for r in snap.get("runs", []) if isinstance(r, dict) and "run_id" in r}


def write_snapshot(sweep_uri: str, rows: list[dict]) -> None:
    io.write_text(layout.status_file(sweep_uri), json.dumps({"time": time.time(), "runs": rows}))


def _run_state(sweep_uri: str, t: Trial, cells: int, names: dict[str, int]) -> dict:
    d = layout.trial_dir(sweep_uri, t.trial_id)
    row = {"run_id": t.trial_id, "cells": cells, "state": "pending", "step": 0,
           "steps": t.config.train.steps, "eval_ppl": float("nan"), "attempts": names.get(trial_files.ATTEMPTS, 0),
           "wall_s": float("nan"), "node": "", "error": "", "eval_loss": float("nan"), "eval_step": 0,
           "loss": float("nan"), "tokens_per_s": float("nan"), "eta_s": float("nan")}
    if trial_files.TRIAL in names:
        r = trial_files.read_result(d, STATUS_COLUMNS)
        row.update(state=r["status"], step=r["final_step"], eval_ppl=r["eval_ppl"], wall_s=r["wall_s"],
                   node=(r.get("node_id") or "")[:8], error=r.get("error") or "", eval_loss=r["eval_loss"],
                   eval_step=r["final_step"], tokens_per_s=r["tokens_per_s"], eta_s=0.0)
    elif trial_files.STOPPED in names:  # a search trial the scheduler stopped early
        r = _json(io.join(d, trial_files.STOPPED)) or {}
        row.update(state="stopped", step=r.get("step", 0), eval_ppl=r.get("eval_ppl", float("nan")),
                   eval_loss=r.get("eval_loss", float("nan")), eval_step=r.get("step", 0))
    else:
        # read as they are being rewritten: an unreadable record counts as none
        prog = _json(io.join(d, trial_files.PROGRESS)) if trial_files.PROGRESS in names else None
        err = _json(io.join(d, trial_files.ERROR)) if trial_files.ERROR in names else None
        if prog:
            row.update(step=prog["step"], eta_s=prog.get("eta_s"), updated=prog.get("time"),
                       loss=prog.get("loss"), tokens_per_s=prog.get("tokens_per_s"))
        if trial_files.STEPS in names:
            row.update(_latest_eval(io.join(d, trial_files.STEPS)))
        if err:
            row["error"] = err["error"]
            row["state"] = "errored" if err.get("final") else "retrying"
            if not err.get("final") and prog and prog.get("attempt", 0) > err["attempt"]:
                row["state"] = "running"
        elif row["attempts"]:
            row["state"] = "running"
    return row


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


def counts(rows: list[dict]) -> dict[str, int]:
    return {s: sum(r["state"] == s for r in rows) for s in STATES}


def duration(seconds: float) -> str:
    """'2d 03h', '5h 07m', '12m 05s', '40s': days never wrap (a paper sweep runs for days)."""
    s = int(round(max(seconds, 0.0)))
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    if d:
        return f"{d}d {h:02d}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {sec:02d}s" if m else f"{sec}s"


def slots(sweep_uri: str, spec, n_runs: int) -> int:
    """Trials at a time: what the last driver found on its cluster (driver.json); else this
    machine's CPUs over one trial's CPUs (a sweep not started yet, or started before driver.json)."""
    info = _json(layout.driver_file(sweep_uri))
    if info and info.get("slots"):
        return int(info["slots"])
    return local_slots(spec, n_runs)


def local_slots(spec, n_runs: int) -> int:
    """Trials at a time on this machine: its CPUs over one trial's (resources.cpu for each of its
    resources.workers), capped by max_concurrent (None: as many as the CPUs allow) and by the runs."""
    by_cpu = int((os.cpu_count() or 1) // (spec.resources.cpu * spec.resources.workers)) or 1
    return max(1, min(n_runs, spec.max_concurrent or n_runs, by_cpu))


def eta_seconds(rows: list[dict], concurrency: int) -> float | None:
    """Remaining time: median wall time of finished runs x the work left / trials at a time.

    The work left counts a running run by the fraction of its steps still to do; with fewer runs
    left than slots, the longest remaining run decides.
    """
    walls = sorted(r["wall_s"] for r in rows if r["state"] in ("completed", "diverged"))
    if not walls:
        return None
    median = (walls[(len(walls) - 1) // 2] + walls[len(walls) // 2]) / 2
    active = [r for r in rows if r["state"] not in ("completed", "diverged", "stopped", "errored")]
    if not active:
        return None
    left = [1.0 - min(max(r["step"] / r["steps"], 0.0), 1.0) for r in active]
    return median * max(sum(left) / max(concurrency, 1), max(left))


def summary_line(rows: list[dict], concurrency: int, started: float | None = None) -> str:
    c = counts(rows)
    done = c["completed"] + c["diverged"] + c["stopped"]
    parts = [f"{done}/{len(rows)} runs done", f"{c['running']} running", f"{c['pending']} pending"]
    if c["retrying"]:
        parts.append(f"{c['retrying']} retrying")
    if c["errored"] or c["diverged"]:
        parts.append(f"{c['errored']} errored, {c['diverged']} diverged")
    if c["stopped"]:
        parts.append(f"{c['stopped']} stopped early")
    eta = eta_seconds(rows, concurrency)
    if eta is not None and done < len(rows):
        parts.append(f"ETA {duration(eta)} ({concurrency} at a time)")
    if started:
        parts.append(f"elapsed {duration(time.time() - started)}")
    return " | ".join(parts)


def driver_line(sweep_uri: str) -> str:
    from orchestrator.sweep.lock import SweepLock

    alive, who = SweepLock(sweep_uri).holder()
    return f"driver: running ({who})" if alive else f"driver: none running ({who})"


def table(rows: list[dict]) -> str:
    """One line per run, columns aligned (numbers right, text left)."""
    cols = ["run_id", "cells", "state", "step", "steps", "eval_loss", "eval_step", "eval_ppl", "attempts", "wall_s",
            "node", "error"]

    def cell(v) -> str:
        if isinstance(v, float):
            return "NaN" if v != v else f"{v:.2f}"
        return str(v)

    cells = [[cell(r[c])[:60] for c in cols] for r in rows]
    width = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(cols)]
    numeric = [bool(rows) and isinstance(rows[0][c], (int, float)) for c in cols]
    fmt = lambda line: "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(line, width, numeric)).rstrip()
    return "\n".join([fmt(cols)] + [fmt(line) for line in cells])


def collect_unfinished(sweep_uri: str) -> str | None:
    """For a sweep folder whose runs are not all final (still running, or stopped): collect what the
    trials have written so far into results/ and say how partial it is. None for a finished sweep or
    a folder that is not a sweep (then results/ is used as it is)."""
    from orchestrator.sweep.collect import collect
    from orchestrator.sweep.search_plan import trials_of

    if not io.exists(layout.spec_file(sweep_uri)):
        return None
    spec = load_saved(sweep_uri)
    trials = trials_of(spec, sweep_uri, sweep_uri)
    if not trials:  # a search that has not chosen what to confirm yet: nothing to summarise
        return None
    rows = run_states(sweep_uri, trials)
    c = counts(rows)
    open_runs = c["running"] + c["retrying"] + c["pending"]
    if not open_runs:
        return None
    collect(spec, trials, sweep_uri)
    return (f"{len(rows) - open_runs} of {len(rows)} runs finished ({c['running']} running, {c['pending']} pending); "
            "unfinished runs are left out")


def all_trials(spec, sweep_uri: str) -> list[Trial]:
    """Every run `status` and `watch` show: a search's trials, then the grid or confirmation.
    A plain sweep needs only its spec (status stays light: no driver, torch or Ray imports)."""
    if not spec.search:
        from orchestrator.spec import expand

        return expand(spec, sweep_uri)
    from orchestrator.sweep.search_plan import search_trials, trials_of

    return search_trials(spec, sweep_uri) + trials_of(spec, sweep_uri, sweep_uri)
