"""What the report and its figures are drawn from: one sweep's aggregated tables, with the
baseline, the focus configuration and the scale gap to the paper decided once, and the choice of
the trials whose attention samples are shown (made before those rows are read, as the attention
table can be large)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from localist.schedules import UNIFORM
from orchestrator.analysis.cells import KEYS, focus_configuration, label, schedule_order
from orchestrator.analysis.paper import QUINTIC, UNIFORM_STRICT, scale_gap


@dataclass
class ReportInput:
    sweep_uri: str
    baseline: str
    trials: pd.DataFrame
    cells: pd.DataFrame
    cell_stats: pd.DataFrame
    layers: pd.DataFrame
    curves: pd.DataFrame
    excluded: pd.DataFrame
    attention: pd.DataFrame | None = None
    attention_picks: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    provenance: dict | None = None
    focus: str | None = None  # the configuration the line figures show; from ``cells`` when not given
    scale: dict = field(init=False)  # ``paper.scale_gap`` of ``provenance``

    def __post_init__(self) -> None:
        if self.focus is None:
            self.focus = focus_configuration(self.cells, self.baseline)
        self.scale = scale_gap(self.provenance)


def pick_attention_trials(trials: pd.DataFrame, baseline: str, focus: str) -> list[dict]:
    """The trials whose attention sample is shown: baseline, quintic (focus configuration) and
    uniform strict, each at its lowest completed seed; fallbacks are labelled as such."""
    done = trials[trials["status"] == "completed"]
    if done.empty:
        done = trials
    grid = done[done["comparator"].isna()]
    comps = done[~done["comparator"].isna()]
    order = schedule_order(trials["schedule"].unique())
    rank = {s: i for i, s in enumerate(order)}
    wanted = []
    base = grid[grid["configuration"] == baseline]
    wanted.append(("baseline", f"baseline ({baseline})", base))
    if focus != baseline:
        mine = grid[grid["configuration"] == focus]
        steep = [s for s in order if s != UNIFORM and s in set(mine["schedule"])]
        sched = QUINTIC if QUINTIC in steep else (steep[-1] if steep else None)
        if sched is not None:
            name = f"{focus}/{sched}" + ("" if sched == QUINTIC else f" (no {QUINTIC} in this sweep)")
            wanted.append((QUINTIC, name, mine[mine["schedule"] == sched]))
    strict = comps[comps["comparator"] == UNIFORM_STRICT]
    if strict.empty:
        strict = comps[comps["comparator"].astype(str).str.contains(UNIFORM)]
    if strict.empty and focus != baseline:
        strict = grid[(grid["configuration"] == focus) & (grid["schedule"] == UNIFORM)]
    if not strict.empty:
        wanted.append((UNIFORM_STRICT, label(*strict[list(KEYS)].iloc[0]), strict))
    picks = []
    for role, name, rows in wanted:
        if rows.empty:
            continue
        rows = rows.assign(_r=rows["schedule"].map(lambda s: rank.get(s, len(rank))))
        row = rows.sort_values(["seed", "_r", "trial_id"]).iloc[0]
        picks.append({"role": role, "label": f"{name}, seed {row['seed']}",
                      "trial_id": row["trial_id"], "run_trial_id": row["run_trial_id"]})
    return picks
