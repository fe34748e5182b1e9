"""The cell model: what a cell is and how cells are named, ordered and compared.

A cell is one grid point (configuration x schedule) or one comparator, identified by ``KEYS``;
its seeds are averaged together. This module orders cells for every table and figure (by peak
locality, then schedule in ``localist.schedules.SCHEDULE_NAMES`` order), labels them, picks the
baseline every cell is compared with and the focus configuration the report's line figures
show - each decided here once, so the tables, the terminal and the report agree.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from localist.schedules import SCHEDULE_NAMES
from orchestrator.analysis.errors import AggregateError

KEYS = ("configuration", "schedule", "comparator")
PEAK = "locality.peak"


def is_null(x) -> bool:
    """True for a missing label (None, NaN, pd.NA)."""
    return x is None or bool(pd.isna(x))


def _natural(name) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                 for t in re.split(r"(\d+)", "" if is_null(name) else str(name)))


def configuration_order(trials: pd.DataFrame) -> list[str]:
    """Grid configurations ordered by peak locality (then name)."""
    grid = trials[trials["comparator"].isna() & trials["configuration"].notna()]
    peaks = grid.groupby("configuration")[PEAK].first()
    return sorted(peaks.index, key=lambda c: (not np.isfinite(peaks[c]),
                                              peaks[c] if np.isfinite(peaks[c]) else 0.0,
                                              _natural(c)))


def schedule_order(names) -> list:
    """The distinct schedule names present, known ones first in ``SCHEDULE_NAMES`` order."""
    known = {s: i for i, s in enumerate(SCHEDULE_NAMES)}
    present = {n for n in names if not is_null(n)}
    return sorted(present, key=lambda s: (known.get(s, len(known)), _natural(s)))


def resolve_baseline(trials: pd.DataFrame, baseline: str | None = None) -> str:
    """The baseline configuration: ``baseline`` if given, else the one whose peak is 0."""
    configs = configuration_order(trials)
    if not configs:
        raise AggregateError("the results hold no grid configurations (only comparators), "
                             "so there is no baseline to compare against")
    valid = ", ".join(configs)
    if baseline is not None:
        if baseline not in configs:
            raise AggregateError(f"unknown baseline configuration {baseline!r}; valid: {valid}")
        return baseline
    peaks = trials[trials["comparator"].isna()].groupby("configuration")[PEAK].first()
    if np.isfinite(peaks.to_numpy(dtype=float)).any():
        zero = [c for c in configs if peaks.get(c) == 0]
        what = "locality.peak == 0"
    else:
        zero = [c for c in configs
                if re.fullmatch(r"(peak[-_]?0+(\.0+)?|baseline|distributed)", str(c).lower())]
        what = "a name like 'peak-0'"
    if len(zero) == 1:
        return zero[0]
    if not zero:
        raise AggregateError(f"no configuration has {what}; pass --baseline, one of: {valid}")
    raise AggregateError(f"several configurations have {what} ({', '.join(zero)}); "
                         f"pass --baseline, one of: {valid}")


def cell_table(trials: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per grid cell and comparator, in report order; index = cell id."""
    configs = configuration_order(trials)
    scheds = schedule_order(trials["schedule"].unique())
    rank_c = {c: i for i, c in enumerate(configs)}
    rank_s = {s: i for i, s in enumerate(scheds)}
    keys = trials[list(KEYS)].drop_duplicates()
    peaks = trials.groupby(trials["configuration"].fillna(trials["comparator"]))[PEAK].first()
    rows = []
    for conf, sched, comp in keys.itertuples(index=False):
        conf, sched, comp = (None if is_null(v) else v for v in (conf, sched, comp))
        if comp is not None:
            order = (1, 0, 0, _natural(comp))
            peak = peaks.get(comp, np.nan)
        else:
            order = (0, rank_c.get(conf, len(rank_c)), rank_s.get(sched, len(rank_s)), ())
            peak = peaks.get(conf, np.nan)
        rows.append({"configuration": conf, "schedule": sched, "comparator": comp,
                     "peak": np.nan if is_null(peak) else float(peak),
                     "is_baseline": comp is None and conf == baseline, "_order": order})
    cells = pd.DataFrame({k: pd.Series([r[k] for r in rows], dtype=object if k in KEYS else None)
                          for k in rows[0]})
    cells = cells.iloc[sorted(range(len(cells)), key=lambda i: cells["_order"].iloc[i])]
    return cells.drop(columns="_order").reset_index(drop=True)


def attach_cells(trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with a ``cell`` column: the id (index) of its row in ``cells``."""
    key = cells[list(KEYS)].astype(object).fillna("\x00")
    ids = {tuple(k): i for i, k in zip(cells.index, key.itertuples(index=False))}
    tkey = trials[list(KEYS)].astype(object).fillna("\x00")
    out = trials.copy()
    out["cell"] = [ids[tuple(k)] for k in tkey.itertuples(index=False)]
    return out


def label(configuration, schedule, comparator) -> str:
    """How a cell is named in tables and figures: 'config/schedule', 'config' or the comparator."""
    if not is_null(comparator):
        return str(comparator)
    return str(configuration) if is_null(schedule) else f"{configuration}/{schedule}"


def focus_configuration(cells: pd.DataFrame, baseline: str):
    """The most localist grid configuration (highest peak; else last in order), baseline if alone."""
    if cells.empty:
        return baseline
    grid = cells[cells["comparator"].isna() & ~cells["is_baseline"]]
    if grid.empty:
        return baseline
    peaks = grid.groupby("configuration", sort=False)["peak"].first()
    if np.isfinite(peaks.to_numpy(dtype=float)).any():
        return peaks.idxmax()
    return grid["configuration"].iloc[-1]
