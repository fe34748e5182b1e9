"""Planning a search sweep from its spec and what its storage holds: the searches (groups), their
budget, the settings each search chose, and the confirmation trials that rerun them with seeds.
Nothing here imports Ray."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from localist import io
from orchestrator import layout
from orchestrator.search import CELL_KEY, Search, with_values
from orchestrator.spec import SweepSpec, Trial, cells, expand, finalise, make_trial


@dataclass
class Group:
    """One search: a name (its folder), the cells it may place trials in, and the cells it stands for."""

    name: str
    cells: list[str]  # cells its trials run in (one when per: cell)
    serves: list[str]  # cells whose confirmation uses its best settings


def groups(spec) -> list[Group]:
    """per: cell - one search per cell whose runs are distinct (peak 0 under every schedule is one
    model, so one search serves them all); per: sweep - one search over all distinct cells."""
    all_cells = cells(spec)
    trials = finalise([make_trial(spec, c, spec.seeds[0], "<sweep>") for c in all_cells],
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


def confirm_trials(spec, sweep_uri: str, source: str = "<sweep>"):
    """The ordinary trials of the confirmation: every cell x top setting x confirm seed.

    Rank r > 1 is marked in the schedule label ('linear#2'), so the summary pairs each cell's
    r-th setting with the baseline's r-th setting of the same seed; rank 1 keeps the plain labels.
    [] when there is no confirm phase or the search has not finished.
    """
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
                t = make_trial(spec, cell, seed, source, tree=with_values(cell.tree, values),
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


def trials_of(spec: SweepSpec, sweep_uri: str, source: str) -> list[Trial]:
    """The ordinary trials of a sweep: its grid, or a search's confirmation (once the search ended)."""
    if spec.search:
        return confirm_trials(spec, sweep_uri, source)
    return expand(spec, source)


def started(sweep_uri: str, group: Group) -> list[str]:
    """The search trials of a group that have a folder (named <group>__t<NNN> by the searcher)."""
    pattern = re.compile(re.escape(group.name) + r"__t\d+$")
    return [n for n in io.listdir(layout.trials_dir(sweep_uri)) if pattern.match(n)]


def search_trials(spec: SweepSpec, sweep_uri: str) -> list[Trial]:
    """The search trials started so far, as trials `status` can show (config: their group's first cell)."""
    by_name = {c.name: c for c in cells(spec)}
    out = []
    for g in groups(spec):
        for name in started(sweep_uri, g):
            t = make_trial(spec, by_name[g.cells[0]], spec.seeds[0], sweep_uri, trial_id=name)
            t.run_id = name
            out.append(t)
    return out
