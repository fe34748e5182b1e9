"""The `search:` section of a sweep file: schema, validation, search groups, ranking and confirmation.

A search sweep samples hyperparameters (any dotted trial key) per grid cell (`per: cell`) or once
across the whole grid (`per: sweep`, where the cell is one more choice of the search), optionally
stopping poor trials early with ASHA. `confirm` then reruns the best settings with seeds as
ordinary trials, so the summary compares them with the grid's paired statistics. Nothing here
imports Ray: the Tune side lives in orchestrator/search_run.py.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from localist import io
from localist.config import ConfigError, nearest, set_dotted, valid_keys
from orchestrator import layout

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
CELL_KEY = "cell"  # the search key that picks the grid cell when per: sweep


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Asha(_Strict):
    grace_period: int | None = Field(None, ge=1, description="steps before a trial can be stopped (default eval_every)")
    reduction_factor: float = Field(2.0, gt=1, description="keep 1/reduction_factor of trials at each rung")
    max_t: int | None = Field(None, ge=1, description="steps at which every trial stops (default train.steps)")


class Scheduler(_Strict):
    asha: Asha


class Until(_Strict):
    ci_half_width: float = Field(gt=0, description="target 95% t half-width of a cell's ratio to the baseline")
    max_seeds: int = Field(ge=2, description="a cell gets no more seeds than this")


class Confirm(_Strict):
    top: int = Field(1, ge=1, description="best settings to confirm (per cell when per: cell)")
    seeds: list[int] = Field(min_length=1, description="seeds each confirmed setting runs with")
    until: Until | None = Field(None, description="add seeds to a cell in rounds until its ratio's CI is narrow")


class Search(_Strict):
    algorithm: Literal["grid", "random", "optuna"] = "optuna"
    metric: Literal["eval_loss", "eval_ppl"] = "eval_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(8, ge=1, description="trials per search (grid: repeats of the whole grid)")
    max_concurrent: int | None = Field(None, ge=1, description="trials at once (default: the sweep's max_concurrent)")
    seed: int = Field(0, ge=0, description="the searcher's random state")
    per: Literal["cell", "sweep"] = "cell"
    space: dict[str, Any] = Field(min_length=1)
    scheduler: Scheduler | None = None
    confirm: Confirm | None = None


# --------------------------------------------------------------------------------------------
# validation


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _distribution(key: str, raw: Any, algorithm: str, err) -> tuple[str, Any]:
    """(kind, args) of one space entry such as {loguniform: [1e-4, 1e-2]}, or err(...)."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise err(key, f"must be one distribution such as {{loguniform: [0.0001, 0.01]}}, got {raw!r}")
    kind, args = next(iter(raw.items()))
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise err(key, f"unknown distribution {kind!r}{hint}; use one of {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise err(key, f"choice needs a non-empty list of values, got {args!r}")
        return kind, args
    if algorithm == "grid":
        raise err(key, f"algorithm grid enumerates values: use choice, not {kind}")
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        raise err(key, f"{kind} needs [low, high], two numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise err(key, f"{kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise err(key, f"loguniform needs low > 0, got {low}")
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise err(key, f"int needs integer bounds, got {args!r}")
    return kind, args


def check(spec, source: str) -> None:
    """Refuse a bad search section with the file and key; builds every cell at the space's extremes
    so a value the trial config refuses (lr <= 0, a bad power) fails now, not inside Ray."""
    from orchestrator.spec import cells, make_trial

    search: Search = spec.search

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{source}: search.space.{key}: {msg}")

    keys = valid_keys()
    parsed = {}
    for key, raw in search.space.items():
        if key == "seed":
            raise err(key, "seeds are not searched: the search trains with grid.seeds[0], confirm with confirm.seeds")
        if key not in keys:
            raise err(key, f"not a trial-config key{nearest(key, keys)}")
        parsed[key] = _distribution(key, raw, search.algorithm, err)
    if search.confirm and len(set(search.confirm.seeds)) != len(search.confirm.seeds):
        raise ConfigError(f"{source}: search.confirm.seeds: duplicate seeds in {search.confirm.seeds}")
    if search.confirm and any(s < 0 for s in search.confirm.seeds):
        raise ConfigError(f"{source}: search.confirm.seeds: seeds must be non-negative")
    until = search.confirm.until if search.confirm else None
    if until and until.max_seeds < len(search.confirm.seeds):
        raise ConfigError(f"{source}: search.confirm.until.max_seeds: {until.max_seeds} is fewer than the "
                          f"{len(search.confirm.seeds)} confirm seeds")
    asha = search.scheduler.asha if search.scheduler else None
    if asha and asha.grace_period and asha.max_t and asha.grace_period > asha.max_t:
        raise ConfigError(f"{source}: search.scheduler.asha.grace_period: {asha.grace_period} exceeds max_t "
                          f"({asha.max_t})")
    for cell in cells(spec):
        for key, (kind, args) in parsed.items():
            for value in args:  # the bounds, or every choice
                tree = with_values(cell.tree, {key: value})
                try:
                    make_trial(spec, cell, spec.seeds[0], source, check_paths=False, tree=tree)
                except ConfigError as e:
                    raise err(key, f"the value {value!r} makes an invalid trial: {e}") from None


def with_values(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a partial trial tree with dotted-key values set."""
    out = copy.deepcopy(tree)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


# --------------------------------------------------------------------------------------------
# groups: what each search runs over


@dataclass
class Group:
    """One search: a name (its folder), the cells it may place trials in, and the cells it stands for."""

    name: str
    cells: list[str]  # cells its trials run in (one when per: cell)
    serves: list[str]  # cells whose confirmation uses its best settings


def groups(spec) -> list[Group]:
    """per: cell - one search per cell whose runs are distinct (peak 0 under every schedule is one
    model, so one search serves them all); per: sweep - one search over all distinct cells."""
    from orchestrator.spec import cells, finalise, make_trial

    all_cells = cells(spec)
    trials = finalise([make_trial(spec, c, spec.seeds[0], "<sweep>", check_paths=False) for c in all_cells],
                      "<sweep>")
    by_trial = {t.trial_id: c.name for t, c in zip(trials, all_cells)}
    runs = {}
    for t, c in zip(trials, all_cells):
        runs.setdefault(by_trial[t.run_id], []).append(c.name)
    if spec.search.per == "sweep":
        return [Group("search", list(runs), [c.name for c in all_cells])]
    return [Group(name, [name], served) for name, served in runs.items()]


def budget(spec) -> dict[str, int]:
    """Upper bounds: search trials, their training steps (before early stopping), confirm trials."""
    from orchestrator.spec import cells

    search: Search = spec.search
    gs = groups(spec)
    n_space = 1
    if search.algorithm == "grid":
        for _, raw in search.space.items():
            n_space *= len(next(iter(raw.values())))
    per_group = [search.num_samples * n_space * (len(g.cells) if search.algorithm == "grid" else 1) for g in gs]
    steps = max(int((c.tree.get("train") or {}).get("steps", 200)) for c in cells(spec))
    confirm = 0
    if search.confirm:
        confirm = search.confirm.top * len(search.confirm.seeds) * len(cells(spec))
    return {"groups": len(gs), "search_trials": sum(per_group), "max_steps": steps, "confirm_trials": confirm}


# --------------------------------------------------------------------------------------------
# results: ranking and the settings to confirm


def rank(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """Completed trials with a finite metric, best first; stopped, diverged and errored ones never rank."""
    ok = [r for r in rows if r["status"] == "completed" and _number(r.get(metric))]
    return sorted(ok, key=lambda r: r[metric] if mode == "min" else -r[metric])


def best_settings(spec, sweep_uri: str) -> dict[str, list[dict]] | None:
    """cell -> the top settings to confirm ({key: value}, best first); None until every search finished."""
    search: Search = spec.search
    out: dict[str, list[dict]] = {}
    for g in groups(spec):
        f = layout.search_file(sweep_uri, g.name)
        if not io.exists(f):
            return None
        top = json.loads(io.read_text(f))["top"][: search.confirm.top if search.confirm else 1]
        for cell in g.serves:
            out[cell] = [{k: v for k, v in s["values"].items() if k != CELL_KEY} for s in top]
    return out


def confirm_trials(spec, sweep_uri: str, source: str = "<sweep>", check_paths: bool = True):
    """The ordinary trials of the confirmation: every cell x top setting x confirm seed.

    Rank r > 1 is marked in the schedule label ('linear#2'), so the summary pairs each cell's
    r-th setting with the baseline's r-th setting of the same seed; rank 1 keeps the plain labels.
    [] when there is no confirm phase or the search has not finished.
    """
    from orchestrator.spec import cells, finalise, make_trial

    search: Search = spec.search
    best = best_settings(spec, sweep_uri) if search.confirm else None
    if not best:
        return []
    rounds = json.loads(io.read_text(layout.rounds_file(sweep_uri))) if io.exists(layout.rounds_file(sweep_uri)) else []
    plan = [(seed, cells(spec)) for seed in search.confirm.seeds]
    by_name = {c.name: c for c in cells(spec)}
    plan += [(r["seed"], [by_name[name] for name in r["cells"]]) for r in rounds]
    trials = []
    for seed, seed_cells in plan:
        for cell in seed_cells:
            for r, values in enumerate(best[cell.name], start=1):
                t = make_trial(spec, cell, seed, source, check_paths, tree=with_values(cell.tree, values),
                               trial_id=f"{cell.name}__top{r}__s{seed}")
                if r > 1:
                    if t.comparator:
                        t.comparator = f"{t.comparator}#{r}"
                    elif "schedule" in t.coords:
                        t.coords["schedule"] = f"{t.coords['schedule']}#{r}"
                    else:
                        t.coords["schedule"] = f"top{r}"
                t.rank = r
                trials.append(t)
    return finalise(trials, source)


def describe(spec) -> list[str]:
    """The dry run's account of the search: space, algorithm, stopping and budget."""
    from orchestrator.spec import cells

    search: Search = spec.search
    b = budget(spec)
    lines = [f"search: {search.algorithm} over {', '.join(search.space)} per {search.per}, "
             f"{search.metric} ({search.mode}), searcher seed {search.seed}; trials train with seed {spec.seeds[0]}"]
    for key, raw in search.space.items():
        kind, args = next(iter(raw.items()))
        lines.append(f"  {key}: {kind} {args}")
    if search.per == "sweep":
        lines.append(f"  {CELL_KEY}: choice over {len(groups(spec)[0].cells)} distinct cells")
    if search.scheduler:
        a = search.scheduler.asha
        lines.append(f"  early stopping: ASHA on step, grace_period {a.grace_period or 'eval_every'}, "
                     f"reduction_factor {a.reduction_factor:g}, max_t {a.max_t or 'train.steps'}")
    lines.append(f"budget: {b['groups']} search(es), {b['search_trials']} search trials of at most "
                 f"{b['max_steps']} steps (fewer when stopped early)"
                 + (f"; then {b['confirm_trials']} confirm results (top {search.confirm.top} x seeds "
                    f"{search.confirm.seeds} x every cell, before dedup)" if search.confirm else "; no confirm phase"))
    until = search.confirm.until if search.confirm else None
    if until:
        lines.append(f"sequential seeding: a cell gets one more seed per round while its ratio's 95% t half-width "
                     f"exceeds {until.ci_half_width:g}, up to {until.max_seeds} seeds (at most "
                     f"{search.confirm.top * until.max_seeds * len(cells(spec))} confirm results)")
    return lines


def report_note(sweep_uri: str) -> str | None:
    """What the summary of a search sweep must say: its results confirm searched settings, how
    each search went, and whether seeds were added sequentially. None for other sweeps."""
    folder = io.join(sweep_uri, "search")
    names = [n for n in io.listdir(folder) if n.endswith(".json") and not n.startswith("_")]
    if not names:
        return None
    parts = []
    for name in names:
        rec = json.loads(io.read_text(io.join(folder, name)))
        statuses = [t["status"] for t in rec["trials"]]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
        best = rec["top"][0] if rec["top"] else None
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in (best["values"] if best else {}).items() if k != CELL_KEY)
        parts.append(f"{rec['group']}: {len(statuses)} trials ({counts}), best {shown} "
                     f"({rec['metric']} {best[rec['metric']]:.4f})" if best else f"{rec['group']}: no completed trial")
    text = ("These results rerun settings found by a search. Only completed search trials were ranked; "
            "stopped (early-stopped), diverged and errored ones are listed in results/search.parquet and "
            "never averaged. " + "; ".join(parts) + ".")
    rounds_f = layout.rounds_file(sweep_uri)
    rounds = json.loads(io.read_text(rounds_f)) if io.exists(rounds_f) else []
    if rounds:
        added = "; ".join(f"seed {r['seed']} to {', '.join(r['cells'])}" for r in rounds)
        text += (f" Sequential seeding: seeds were added in rounds ({added}) while a cell's ratio 95% t "
                 "half-width exceeded the target, so the number of seeds depended on the results seen.")
    return text
