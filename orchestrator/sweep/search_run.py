"""A search sweep on Ray Tune: one Tuner per search group (Optuna TPE, random or grid sampling,
optionally ASHA), then the confirmation as an ordinary grid of trials.

Each search keeps its own Tune experiment under tune-search/<group>/, so a killed driver resumes
it with `Tuner.restore` (the searcher's state included) and no finished trial runs again. Tune
writes the trial list and the searcher as separate files: a driver killed between the two leaves
a searcher behind its trials (or none), which would end the search early or give two trials one
name. Such a search continues instead in a new experiment that samples only the missing trials,
its searcher told the finished ones' results. When a search ends, search/<group>.json fixes its
ranking, so the confirm settings never change later.
"""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pyarrow as pa

from localist import io, trial_files
from localist.outputs import trial_row
from localist.config import TrainConfig, TrialConfig
from orchestrator import layout
from orchestrator.search import CELL_KEY, Search, rank, sampled, with_values
from orchestrator.sweep import train_workers, tune_state, tuners
from orchestrator.sweep.search_plan import Group, confirm_trials, groups, started
from orchestrator.spec import SweepSpec, Trial, cells, check_files, sweep_keys


def _trees(spec: SweepSpec) -> dict[str, dict]:
    """cell name -> its partial trial tree as a trial of the sweep gets it."""
    return {c.name: sweep_keys(spec, json.loads(json.dumps(c.tree))) for c in cells(spec)}


def _space(search: Search, group: Group) -> dict:
    from ray import tune

    grid = search.algorithm == "grid"
    space = {}
    for key, raw in search.space.items():
        kind, args = next(iter(raw.items()))
        if kind == "choice":
            space[key] = tune.grid_search(args) if grid else tune.choice(args)
        elif kind == "uniform":
            space[key] = tune.uniform(*args)
        elif kind == "loguniform":
            space[key] = tune.loguniform(*args)
        else:  # int: both bounds included
            space[key] = tune.randint(args[0], args[1] + 1)
    if len(group.cells) == 1:
        space[CELL_KEY] = group.cells[0]
    else:
        space[CELL_KEY] = tune.grid_search(group.cells) if grid else tune.choice(group.cells)
    return space


def _defaults(spec: SweepSpec, key: str) -> list[int]:
    """train.<key> of every cell, the schema's default where a cell leaves it unset."""
    default = TrainConfig.model_fields[key].default
    return [int((t.get("train") or {}).get(key, default)) for t in _trees(spec).values()]


def _state_problem(tune_uri: str) -> str | None:
    """Why Tune's saved search cannot be restored as it is; None when it can (or nothing was saved)."""
    from ray import cloudpickle

    state = tune_state.newest(tune_uri)
    if state is None:
        return None
    searchers = sorted(n for n in io.listdir(tune_uri) if n.startswith(("search_gen_state-", "basic-variant-state-")))
    if not searchers:
        return "no searcher state was saved"
    trials = tune_state.trial_count(state)
    try:
        state = cloudpickle.loads(io.read_bytes(io.join(tune_uri, searchers[-1])))
    except Exception as e:  # noqa: BLE001 - a half-written file reads as anything
        return f"its searcher state is unreadable ({type(e).__name__})"
    if "_iterators" in state:  # random or grid sampling: each iterator counts the trials it made
        counter, total = sum(it.counter for it in state["_iterators"]), state["_total_samples"]
    else:
        counter, total = state.get("counter"), state.get("total_samples")
    if counter != trials or not total:
        return f"its searcher state knows {counter} of {trials} trials"
    return None


def _score(sweep_uri: str, trial_id: str, metric: str) -> float | None:
    """A finished trial's result for the searcher (None: nothing finite to learn from)."""
    d = layout.trial_dir(sweep_uri, trial_id)
    x = trial_files.read_result(d, [metric])[metric] if trial_files.has_result(d) else None
    return float(x) if x is not None and math.isfinite(x) else None


def _trial_index(trial_id: str) -> int:
    return int(trial_id.rsplit("__t", 1)[1])


def _finished(sweep_uri: str, group: Group, space: dict) -> dict[str, dict]:
    """trial id -> sampled values, for the group's search trials that completed, diverged or
    failed for good (ASHA-stopped trials leave no such mark: a continuation samples them again).
    A result without values.json (a trial older than that file) gives its values from its row."""
    out = {}
    for name in started(sweep_uri, group):
        d = layout.trial_dir(sweep_uri, name)
        if not trial_files.ended(d):
            continue
        values = trial_files.read_values(d)
        if values is None and trial_files.has_result(d):
            row = trial_files.read_result(d)
            values = {k: row[k] for k in space if k in row} | ({CELL_KEY: group.cells[0]} if len(group.cells) == 1 else {})
        if values is not None:
            out[name] = values
    return out


def _continue_from(spec: SweepSpec, group: Group, sweep_uri: str, log) -> dict[str, dict]:
    """Drop what a search left that Tune cannot resume (a torn or never saved experiment, the
    unfinished trials); returns its finished trials, which the new experiment starts from."""
    names = started(sweep_uri, group)
    if not names:
        io.delete(layout.search_tune_dir(sweep_uri, group.name))
        return {}
    # a grid cannot skip the points it enumerated: it runs whole again
    done = _finished(sweep_uri, group, spec.search.space) if spec.search.algorithm != "grid" else {}
    for name in names:
        if name not in done:
            io.delete(layout.trial_dir(sweep_uri, name))
    io.delete(layout.search_tune_dir(sweep_uri, group.name))
    log(f"[search] {group.name}: continuing in a new experiment from its {len(done)} finished trial(s)")
    return done


def _tuner(spec: SweepSpec, group: Group, sweep_uri: str, log=print, extra: list = ()):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from orchestrator.sweep.trainable import search_trial

    search: Search = spec.search
    trees = _trees(spec)
    fn = tune.with_parameters(search_trial, cells=trees, seed=spec.seeds[0], sweep_uri=sweep_uri,
                              cpus=spec.resources.cpu, scale=train_workers.scale(spec))
    workers = {name: tree["train"]["workers"] for name, tree in trees.items()}

    def workers_of(config: dict) -> int:  # a searched train.workers, else its cell's
        return int(sampled(config).get("train.workers", workers[config[CELL_KEY]]))

    multi = max(workers.values(), default=1) > 1 or "train.workers" in search.space
    fn = tune.with_resources(fn, train_workers.tune_resources(spec, workers_of, multi))
    uri = layout.search_tune_dir(sweep_uri, group.name)
    fs, path = io.resolve(uri)
    callbacks = tuners.run_callbacks(spec, sweep_uri, extra)  # trackers; the cleaner empties finished or stopped trials' checkpoints
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        problem = _state_problem(uri)
        if problem is None:
            return tuners.restore(uri, fn, callbacks, log, _space(search, group)), True
        log(f"[search] {group.name}: Tune's saved state is torn ({problem}): the driver stopped while writing it")
    # trials started before Tune first saved the experiment would otherwise meet new ones of their name
    done = _continue_from(spec, group, sweep_uri, log)
    first = 1 if search.algorithm == "optuna" else 0  # the first trial's number in Tune's tag
    offset = max(map(_trial_index, done)) + 1 - first if done else 0
    if len(done) >= search.num_samples:
        return None, False
    limit = search.max_concurrent or spec.max_concurrent
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        keys = [*search.space, *([CELL_KEY] if len(group.cells) > 1 else [])]
        scored = [(v, _score(sweep_uri, t, search.metric)) for t, v in sorted(done.items())]
        scored = [({k: v[k] for k in keys}, x) for v, x in scored if x is not None and all(k in v for k in keys)]
        algo = OptunaSearch(seed=search.seed + offset, points_to_evaluate=[p for p, _ in scored] or None,
                            evaluated_rewards=[x for _, x in scored] or None)
    else:  # Tune ignores max_concurrent_trials for this generator: it limits itself
        algo = BasicVariantGenerator(random_state=search.seed + offset, max_concurrent=limit or 0)
    scheduler = None
    if search.scheduler:
        a = search.scheduler.asha
        max_t = a.max_t or max(_defaults(spec, "steps"))
        scheduler = ASHAScheduler(time_attr="step", max_t=max_t, reduction_factor=a.reduction_factor,
                                  grace_period=min(a.grace_period or min(_defaults(spec, "eval_every")), max_t))

    name = group.name  # a str in the pickled closure: Tune saves it with the experiment

    def trial_name(trial) -> str:  # the searcher's counter (after a continuation's finished trials): stable across restores
        return f"{name}__t{offset + int(trial.experiment_tag.split('_', 1)[0]):03d}"

    tuner = tune.Tuner(
        fn,
        param_space=_space(search, group),
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=search.mode, search_alg=algo, scheduler=scheduler,
            num_samples=search.num_samples - len(done),
            max_concurrent_trials=limit if search.algorithm == "optuna" else None,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            reuse_actors=True,  # a worker keeps torch imported; a stopped trial's thread ends at its next report
        ),
        run_config=tuners.run_config(spec, path, fs, callbacks),
    )
    return tuner, False


def _outcome(sweep_uri: str, trial_id: str, metrics: dict) -> dict:
    """status and last eval of a search trial whose Tune run ended."""
    d = layout.trial_dir(sweep_uri, trial_id)
    if trial_files.has_result(d):
        row = trial_files.read_result(d)
        return {"status": row["status"], "eval_loss": row["eval_loss"], "eval_ppl": row["eval_ppl"],
                "step": row["final_step"], "error": None}
    err = trial_files.read_error(d)
    if err is not None and err.get("final"):
        return {"status": "errored", "eval_loss": math.nan, "eval_ppl": math.nan,
                "step": metrics.get("step", 0), "error": err["error"]}
    # Tune ended it without a result: the scheduler stopped it after its last evaluation
    out = {"status": "stopped", "eval_loss": float(metrics.get("eval_loss", math.nan)),
           "eval_ppl": float(metrics.get("eval_ppl", math.nan)), "step": int(metrics.get("step", 0)), "error": None}
    trial_files.write_stopped(d, out)
    return out


def _record(spec: SweepSpec, group: Group, grid, sweep_uri: str) -> dict:
    """search/<group>.json: every trial with its sampled values and outcome, and the top settings
    (the trials a torn experiment's continuation started from included)."""
    search: Search = spec.search
    rows = []
    for r in grid:
        tid = os.path.basename(r.path.rstrip("/"))
        values = sampled(r.config)
        rows.append({"trial_id": tid, "values": values, **_outcome(sweep_uri, tid, r.metrics or {})})
    seen = {r["trial_id"] for r in rows}
    rows += [{"trial_id": tid, "values": values, **_outcome(sweep_uri, tid, {})}
             for tid, values in _finished(sweep_uri, group, search.space).items() if tid not in seen]
    rows.sort(key=lambda x: x["trial_id"])
    ranked = rank(rows, search.metric, search.mode)
    for i, row in enumerate(ranked, start=1):
        row["rank"] = i
    keep = search.confirm.top if search.confirm else 1
    record = {"group": group.name, "metric": search.metric, "mode": search.mode, "trials": rows,
              "top": [{"trial_id": r["trial_id"], "values": r["values"], search.metric: r[search.metric]}
                      for r in ranked[:keep]]}
    io.write_text(layout.search_file(sweep_uri, group.name), json.dumps(record, indent=1))
    return record


def run(spec: SweepSpec, source: str, sweep_uri: str, log, fit, extra: list = ()) -> list[Trial]:
    """Every unfinished search, then the confirmation; returns the confirm trials ([] if none).
    extra: more Tune callbacks for every Tuner (tuners.run_callbacks)."""
    for group in groups(spec):
        if io.exists(layout.search_file(sweep_uri, group.name)):
            log(f"[search] {group.name}: finished earlier, kept")
            continue
        tuner, restored = _tuner(spec, group, sweep_uri, log, extra)
        if tuner is not None:
            log(f"[search] {group.name}: {'restored searcher; continuing' if restored else 'starting'} "
                f"({spec.search.algorithm}, {spec.search.num_samples} samples in all)")
        grid = fit(tuner) if tuner is not None else []
        tuners.mark_final_errors(grid, sweep_uri)
        record = _record(spec, group, grid, sweep_uri)
        counts = pd.Series([r["status"] for r in record["trials"]]).value_counts().to_dict()
        best = record["top"][0] if record["top"] else None
        log(f"[search] {group.name}: {counts}; best "
            + (f"{best['trial_id']} {best['values']} {spec.search.metric} {best[spec.search.metric]:.4f}"
               if best else "none (no trial completed)"))
    trials = confirm_trials(spec, sweep_uri, source)
    check_files(trials, source)  # a searched data.corpus: the settings to confirm must name files that exist
    if trials:
        first = [t for t in trials if t.seed in spec.search.confirm.seeds]
        log(f"[search] confirm: {len(first)} results from {len({t.run_id for t in first})} runs")
        tuners.mark_final_errors(fit(tuners.grid_tuner(spec, first, sweep_uri, log, extra=extra)[0], first), sweep_uri)
        if spec.search.confirm.until:
            trials = _seed_rounds(spec, source, sweep_uri, log, fit, extra)
    return trials


def _seed_rounds(spec: SweepSpec, source: str, sweep_uri: str, log, fit, extra: list = ()) -> list[Trial]:
    """Sequential seeding: while a cell's ratio CI is wider than the target and it has had fewer
    than max_seeds seeds, add the next seed to it (and to the baseline cells), one round at a time.
    Each round is recorded before it runs, so a resumed driver finishes it rather than re-deciding."""
    f = layout.rounds_file(sweep_uri)
    while True:
        rounds = json.loads(io.read_text(f)) if io.exists(f) else []
        trials = confirm_trials(spec, sweep_uri, source)
        for r in rounds:
            new = [t for t in trials if t.seed == r["seed"]]
            if not all(trial_files.ended(layout.trial_dir(sweep_uri, t.run_id)) for t in new):
                log(f"[search] seed round {r['seed']}: {len(new)} results for {', '.join(r['cells'])}")
                tune_uri = layout.seed_tune_dir(sweep_uri, r["seed"])
                tuner = tuners.grid_tuner(spec, new, sweep_uri, log, tune_uri, extra)[0]
                tuners.mark_final_errors(fit(tuner, new), sweep_uri)
        need = _needing_seeds(spec, trials, sweep_uri, log)
        if not need:
            return trials
        rounds.append({"seed": max(t.seed for t in trials) + 1, "cells": need})
        io.write_text(f, json.dumps(rounds, indent=1))


def _needing_seeds(spec: SweepSpec, trials: list[Trial], sweep_uri: str, log) -> list[str]:
    """Cells whose eval_ppl ratio's 95% t half-width exceeds the target and that may get another
    seed, plus the baseline cells (their pairs); [] when none needs one."""
    from orchestrator.analysis.aggregate import AggregateError, aggregate
    from orchestrator.sweep.collect import collect

    until = spec.search.confirm.until
    collect(spec, trials, sweep_uri)
    try:
        stats = aggregate(sweep_uri, report=False, echo=lambda *_: None)["cells"]
    except AggregateError as e:  # no baseline among the results: nothing to narrow
        log(f"[search] no sequential seeding: {e}")
        return []
    rows = io.read_parquet(layout.results_file(sweep_uri, "trials")).to_pandas()

    def key(r) -> tuple:
        return tuple(None if pd.isna(r[k]) else r[k] for k in ("configuration", "schedule", "comparator"))

    names: dict[tuple, set[str]] = {}
    for _, r in rows.iterrows():
        names.setdefault(key(r), set()).add(r["trial_id"].rsplit("__top", 1)[0])
    seeds: dict[str, set[int]] = {}
    for t in trials:
        seeds.setdefault(t.trial_id.rsplit("__top", 1)[0], set()).add(t.seed)
    seeds_of = {name: len(s) for name, s in seeds.items()}
    need, base = set(), set()
    for _, c in stats[stats["metric"] == "eval_ppl"].iterrows():
        cell_names = names.get(key(c), set())
        if c["is_baseline"]:
            base |= cell_names
            continue
        half = (c["ratio_ci_high"] - c["ratio_ci_low"]) / 2
        wide = not math.isfinite(half) or half > until.ci_half_width
        room = [n for n in cell_names if seeds_of.get(n, 0) < until.max_seeds]
        if wide and room:
            need |= set(room)
            log(f"[search] {c['configuration'] or c['comparator']}/{c['schedule']}: ratio 95% half-width "
                f"{half:.4f} > {until.ci_half_width} after {seeds_of[room[0]]} seeds: one more seed")
    base = {n for n in base if seeds_of.get(n, 0) < until.max_seeds}
    return sorted(need | base) if need else []


def collect_search(spec: SweepSpec, sweep_uri: str) -> pd.DataFrame:
    """results/search.parquet: one row per search trial, sampled values as (dotted) columns,
    status completed | stopped | diverged | errored and its last evaluation; rank among completed."""
    trees = _trees(spec)
    by_name = {c.name: c for c in cells(spec)}
    rows = []
    for g in groups(spec):
        f = layout.search_file(sweep_uri, g.name)
        if not io.exists(f):
            continue
        for r in json.loads(io.read_text(f))["trials"]:
            cell = by_name[r["values"][CELL_KEY]]
            d = layout.trial_dir(sweep_uri, r["trial_id"])
            if trial_files.has_result(d):
                row = trial_files.read_result(d)
            else:
                tree = with_values(trees[cell.name], {k: v for k, v in r["values"].items() if k != CELL_KEY})
                tree["seed"] = spec.seeds[0]
                cfg = TrialConfig.model_validate(tree)
                row = trial_row(r["trial_id"], cfg, {"status": r["status"], "error": r.get("error"),
                                                     "eval_loss": r["eval_loss"], "eval_ppl": r["eval_ppl"],
                                                     "final_step": r["step"]})
            coords = {a: cell.coords.get(a) for a in spec.axes}
            rows.append({"trial_id": r["trial_id"], "search_group": g.name, "cell": cell.name, **coords,
                         "comparator": cell.comparator, "search_rank": r.get("rank"),
                         **{k: v for k, v in row.items() if k != "trial_id"}})
    df = pd.DataFrame(rows)
    if len(df):
        df["search_rank"] = df["search_rank"].astype("Int64")
        io.write_parquet(pa.Table.from_pandas(df, preserve_index=False), layout.results_file(sweep_uri, "search"))
    return df


def finish(spec: SweepSpec, sweep_uri: str, log) -> int:
    """Consolidate the search and log the best settings; returns the number of errored trials."""
    df = collect_search(spec, sweep_uri)
    if not len(df):
        log("[search] no finished search yet")
        return 1
    log(f"[search] results: {df['status'].value_counts().to_dict()} -> {layout.results_file(sweep_uri, 'search')}")
    best = df[df["search_rank"] == 1][["search_group", *spec.search.space, spec.search.metric]]
    log("[search] best per search:\n" + best.to_string(index=False))
    return int(df["status"].isin(["errored", "missing"]).sum())
