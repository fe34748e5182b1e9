"""One trial's folder: the names of its files, and the small readers and writers of its records.

`localist train --out DIR` and a sweep's trials/<run_id>/ share this layout. The trainer writes
the rows and the result; a sweep adds its bookkeeping (attempts, errors, search records). Both
sides, and everything that reads a trial (collect, status, search), name the files from here.

<trial folder>/
  steps.parquet, layers.parquet   the rows so far, rewritten at every evaluation (partial until trial.parquet)
  attention.parquet               attention maps of the final evaluation
  trial.parquet                   the one result row, written last: its presence means the trial finished
  progress.json                   the latest training log (step, loss, tokens/s, ETA), rewritten as it runs
  checkpoint/                     `localist train`: its resumable checkpoint (a sweep keeps them in Tune's folders)
  model/                          the saved model, with train.save_model (localist.model.MODEL_DIR)
  attempts/NNN.json               a sweep trial: one per start (time, host, node, pid, from a checkpoint)
  error.json                      a sweep trial: its last failure; "final": true once no retry follows
  values.json                     a search trial: the values its searcher sampled
  stopped.json                    a search trial its scheduler stopped early: its last evaluation
"""

from __future__ import annotations

import json
import time

from localist import io

TRIAL = "trial.parquet"
STEPS = "steps.parquet"
LAYERS = "layers.parquet"
ATTENTION = "attention.parquet"
ROWS = {"steps": STEPS, "layers": LAYERS, "attention": ATTENTION}  # the row tables, by kind
PROGRESS = "progress.json"
CHECKPOINT = "checkpoint"
ATTEMPTS = "attempts"
ERROR = "error.json"
VALUES = "values.json"
STOPPED = "stopped.json"


def _write(d: str, name: str, record: dict) -> None:
    io.write_text(io.join(d, name), json.dumps(record))


def _read(d: str, name: str) -> dict | None:
    f = io.join(d, name)
    return json.loads(io.read_text(f)) if io.exists(f) else None


def by_trial(files: list[str]) -> dict[str, dict[str, int]]:
    """A listing of a folder of trial folders (``io.list_files`` of trials/) as {trial folder: {entry:
    files under it}}: each trial's top-level names (trial.parquet, attempts, ...) and, for a folder
    such as attempts/, how many files it holds (its starts). One listing instead of one per trial."""
    out: dict[str, dict[str, int]] = {}
    for f in files:
        parts = f.split("/")
        if len(parts) >= 2:
            entries = out.setdefault(parts[0], {})
            entries[parts[1]] = entries.get(parts[1], 0) + 1
    return out


# -- the result ---------------------------------------------------------------------------------------

def has_result(d: str) -> bool:
    """trial.parquet is there: the trial completed or diverged."""
    return io.exists(io.join(d, TRIAL))


def read_result(d: str, columns: list[str] | None = None) -> dict:
    """trial.parquet's row; with `columns`, only those (a light read, no pyarrow.dataset)."""
    f = io.join(d, TRIAL)
    if columns is None:
        return io.read_parquet(f).to_pylist()[0]
    return io.read_parquet_rows(f, columns)[0]


def ended(d: str) -> bool:
    """Finished for good: a result, or an error no retry follows."""
    return has_result(d) or error_is_final(d)


# -- progress (rewritten at every log) ----------------------------------------------------------------

def write_progress(d: str, info: dict) -> None:
    _write(d, PROGRESS, info)


def read_progress(d: str) -> dict | None:
    """The latest progress record (None: none yet, or one being rewritten)."""
    try:
        return _read(d, PROGRESS)
    except (OSError, ValueError):
        return None


# -- a sweep trial's starts and failures --------------------------------------------------------------

def attempts(d: str) -> int:
    """How often the trial has started."""
    return len(io.listdir(io.join(d, ATTEMPTS)))


def write_attempt(d: str, n: int, record: dict) -> None:
    io.write_text(io.join(d, ATTEMPTS, f"{n:03d}.json"), json.dumps(record))


def read_attempt(d: str, n: int) -> dict:
    return json.loads(io.read_text(io.join(d, ATTEMPTS, f"{n:03d}.json")))


def write_error(d: str, attempt: int, error: str, trace: str) -> None:
    """This attempt's failure (now); not final: a retry may follow."""
    _write(d, ERROR, {"attempt": attempt, "time": time.time(), "error": error, "traceback": trace, "final": False})


def read_error(d: str) -> dict | None:
    return _read(d, ERROR)


def mark_error_final(d: str, error: str) -> None:
    """No retry follows: the error record becomes final (`error` when the trial wrote none)."""
    err = read_error(d)
    if err is None:
        err = {"error": error}
    err["final"] = True
    _write(d, ERROR, err)


def error_is_final(d: str) -> bool:
    err = read_error(d)
    return bool(err is not None and err.get("final"))


# -- a search trial's records -------------------------------------------------------------------------

def write_values(d: str, values: dict) -> None:
    _write(d, VALUES, values)


def read_values(d: str) -> dict | None:
    return _read(d, VALUES)


def write_stopped(d: str, record: dict) -> None:
    _write(d, STOPPED, record)
