"""`localist sweep watch`: a live terminal table of a sweep's runs, read from the files trials write.

It needs nothing but the sweep's storage (no Ray, no driver connection), so it works from any
machine that can read the storage, while the sweep runs or after.
"""

from __future__ import annotations

import math
import sys
import time

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.spec import load_saved
from orchestrator.sweep import status

FINAL = ("completed", "diverged", "stopped", "errored")
ORDER = {"running": 0, "retrying": 1, "pending": 2, "completed": 3, "diverged": 4, "stopped": 5, "errored": 6}
STYLE = {"running": "bold cyan", "retrying": "yellow", "pending": "dim", "completed": "green",
         "diverged": "magenta", "stopped": "dim", "errored": "bold red"}


def _num(x, fmt: str) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(x) else format(x, fmt)


def _eta(state: str, eta_s) -> str:
    """'done', or a short duration (status.duration: 42s, 5m 07s, 3h 12m)."""
    if state in FINAL:
        return "done"
    secs = _num(eta_s, ".0f")
    return status.duration(float(secs)) if secs else ""


def render(rows: list[dict], title: str, concurrency: int, started: float | None = None) -> Group:
    """One frame: the summary line, then one row per run (running first, then pending, then finished):
    step/steps, latest train loss, latest eval loss and the step it was taken at, tokens/s, ETA."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)  # fits 80 columns
    widest = max((len(r["run_id"]) for r in rows), default=3)
    table.add_column("run", no_wrap=True, min_width=widest)  # the name is the last thing to shorten
    table.add_column("state", no_wrap=True, min_width=9)
    for name in ["step", "loss", "eval", "at", "tok/s", "ETA"]:
        table.add_column(name, justify="right", no_wrap=True)
    for r in sorted(rows, key=lambda r: (ORDER.get(r["state"], 9), r["run_id"])):
        table.add_row(
            r["run_id"], Text(r["state"], style=STYLE.get(r["state"], "")), f"{r['step']}/{r['steps']}",
            _num(r["loss"], ".3f"), _num(r["eval_loss"], ".3f"), str(r["eval_step"] or ""),
            _num(r["tokens_per_s"], ",.0f"), _eta(r["state"], r["eta_s"]))
    return Group(Text(status.summary_line(rows, concurrency, started)), table)


def finished(rows: list[dict]) -> bool:
    return all(r["state"] in FINAL for r in rows)


def watch(sweep_uri: str, every: float = 2.0, once: bool = False, console: Console | None = None) -> int:
    """Refresh the table every `every` seconds until every run is final, or Ctrl-C."""
    spec = load_saved(sweep_uri)
    console = console or Console(width=None if sys.stdout.isatty() else 160)  # piped: don't cut at 80

    def frame() -> tuple[Group, bool]:
        rows = status.run_states(sweep_uri, status.all_trials(spec, sweep_uri))  # a search adds trials
        return render(rows, f"{spec.name}  {sweep_uri}", status.slots(sweep_uri, spec, len(rows))), finished(rows)

    view, done = frame()
    if once or done:
        console.print(view)
        return 0
    try:
        with Live(view, console=console, refresh_per_second=4) as live:
            while not done:
                time.sleep(every)
                view, done = frame()
                live.update(view)
    except KeyboardInterrupt:
        pass
    return 0
