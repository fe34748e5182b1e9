"""Search sweeps with real Ray Tune and Optuna at tiny scale: bad search sections refused before
anything runs, an Optuna search per cell with ASHA whose driver is killed mid-search and resumed,
then confirmed with two seeds and paired statistics; a random search across the whole grid."""

import json
import pickle
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator import cli
from orchestrator.sweep import search_run
from tests.conftest import TINY
from tests.helpers import CLI, attempts, env, kill_session, wait_for

SAMPLES = 6


def search_sweep(path: Path, name: str, storage: Path, algorithm: str, per: str, confirm: bool) -> Path:
    """A 2-cell grid (peak 0 and peak 1, quintic) of 12-step trials evaluated every 3 steps; lr over
    four decades, so ASHA's first rung (3 steps) always finds trials far behind the best."""
    base = json.loads(json.dumps(TINY))
    base["train"].update(steps=12, eval_every=3, log_every=3, warmup_steps=2)
    spec = {
        "name": name, "storage": str(storage), "base": base,
        "grid": {"configuration": {"peak-0": {"locality": {"peak": 0.0}}, "peak-1": {"locality": {"peak": 1.0}}},
                 "schedule": {"quintic": {"locality": {"power": 5}}}, "seeds": [1]},
        "resources": {"cpu": 1}, "max_concurrent": 2, "retries": 0,
        "search": {"algorithm": algorithm, "per": per, "num_samples": SAMPLES, "seed": 3,
                   "space": {"train.lr": {"loguniform": [1e-5, 0.3]}},
                   "scheduler": {"asha": {"grace_period": 3, "reduction_factor": 2}}},
    }
    if confirm:
        # a target no 2-seed interval meets: one round adds seed 3 to both cells, then max_seeds stops it
        spec["search"]["confirm"] = {"top": 1, "seeds": [1, 2], "until": {"ci_half_width": 1e-4, "max_seeds": 3}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _refusal(tmp_path, capsys, change) -> str:
    f = search_sweep(tmp_path / "bad.yaml", "bad", tmp_path / "store", "optuna", "cell", True)
    spec = yaml.safe_load(f.read_text())
    change(spec["search"])
    f.write_text(yaml.safe_dump(spec))
    assert cli.main(["sweep", "run", str(f), "--dry-run"]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("change, expected", [
    (lambda s: s["space"].update({"train.lr": {"logunifrom": [1e-4, 1e-2]}}),
     "search.space.train.lr: unknown distribution 'logunifrom' (did you mean 'loguniform'?)"),
    (lambda s: s["space"].update({"train.lr": {"loguniform": [0, 1e-2]}}), "search.space.train.lr: loguniform needs low > 0"),
    (lambda s: s["space"].update({"train.lr": {"uniform": [-1, 1e-2]}}),
     "search.space.train.lr: the value -1 makes an invalid trial"),
    (lambda s: s["space"].update({"train.warmup": {"int": [1, 5]}}),
     "search.space.train.warmup: not a trial-config key (did you mean 'train.warmup_steps'?)"),
    (lambda s: s["space"].update({"train.warmup_steps": {"int": [1.5, 5]}}),
     "search.space.train.warmup_steps: int needs integer bounds"),
    (lambda s: s.update({"algorithm": "grid"}), "search.space.train.lr: algorithm grid enumerates values: use choice"),
    (lambda s: s.update({"per": "seed"}), "search.per: Input should be 'cell' or 'sweep'"),
])
def test_bad_search_section_refused_naming_the_key(tmp_path, capsys, change, expected):
    err = _refusal(tmp_path, capsys, change)
    assert "bad.yaml: " + expected in err
    assert not (tmp_path / "store").exists()  # refused before anything was written


def test_dry_run_shows_space_and_budget(tmp_path, capsys):
    f = search_sweep(tmp_path / "s.yaml", "s", tmp_path / "store", "optuna", "cell", True)
    assert cli.main(["sweep", "run", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train.lr: loguniform [1e-05, 0.3]" in out
    assert "ASHA on step, grace_period 3, reduction_factor 2" in out
    assert "budget: 2 search(es), 12 search trials of at most 12 steps" in out
    assert "then 4 confirm results (top 1 x seeds [1, 2]" in out
    assert "exceeds 0.0001, up to 3 seeds (at most 6 confirm results)" in out


def _search_dirs(sweep: Path) -> list[str]:
    return sorted(d.name for d in (sweep / "trials").iterdir() if re.search(r"__t\d+$", d.name))


@pytest.fixture(scope="module")
def optuna_resumed(tmp_path_factory):
    """Optuna per cell + ASHA + confirm; the driver is killed once a trial of an unfinished search
    has finished. Its saved state is then torn as a kill during Tune's write leaves it (the trial
    list saved, the searcher not), and `sweep resume` completes the sweep."""
    root = tmp_path_factory.mktemp("search")
    f = search_sweep(root / "opt.yaml", "opt", root / "store", "optuna", "cell", True)
    sweep = root / "store" / "opt"
    proc = subprocess.Popen(CLI + ["sweep", "run", str(f)], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def unfinished_with_a_result() -> list[str]:
        done = {p.parent.name.rsplit("__t", 1)[0] for p in (sweep / "trials").glob("*__t*/trial.parquet")}
        return sorted(g for g in done if not (sweep / "search" / f"{g}.json").exists())
    try:
        assert wait_for(lambda: (sweep / "trials").exists() and unfinished_with_a_result(), 600, proc), \
            "the search never reached a finished trial"
    finally:
        kill_session(proc)
    torn = unfinished_with_a_result()
    before = {p.parent.name for p in (sweep / "trials").glob("*/trial.parquet")}
    searches_done = sorted(p.stem for p in (sweep / "search").glob("*.json")) if (sweep / "search").exists() else []
    for group in torn:
        for state in (sweep / "tune-search" / group).glob("search_gen_state-*"):
            state.unlink()
    proc = subprocess.run(CLI + ["sweep", "resume", str(sweep)], env=env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return sweep, before, searches_done, proc.stdout, torn


def test_optuna_search_per_cell_stops_poor_trials(optuna_resumed):
    sweep, _, _, log, _ = optuna_resumed
    search = pd.read_parquet(sweep / "results" / "search.parquet")
    assert sorted(search.search_group.unique()) == ["peak-0__quintic", "peak-1__quintic"]
    assert (search.groupby("search_group").size() == SAMPLES).all()
    assert "train.lr" in search and search["train.lr"].between(1e-5, 0.3).all()
    stopped = search[search.status == "stopped"]
    assert len(stopped) >= 1, search[["trial_id", "status", "final_step"]]
    assert (stopped.final_step < 12).all() and stopped.eval_loss.notna().all()  # their last evaluation
    assert stopped.search_rank.isna().all()  # a stopped trial never ranks
    for group, rows in search.groupby("search_group"):
        ranked = rows[rows.search_rank.notna()].sort_values("search_rank")
        assert (ranked.status == "completed").all() and ranked.eval_loss.is_monotonic_increasing
        assert len(ranked) >= 1
    for group in ("peak-0__quintic", "peak-1__quintic"):  # the Optuna study, saved for resume
        state = list((sweep / "tune-search" / group).glob("searcher-state-*.pkl"))
        assert state and b"optuna" in state[0].read_bytes()


def test_confirm_reruns_the_best_setting_with_seeds_and_pairs_them(optuna_resumed):
    sweep, _, _, log, _ = optuna_resumed
    search = pd.read_parquet(sweep / "results" / "search.parquet")
    best = search[search.search_rank == 1].set_index("configuration")["train.lr"]
    trials = pd.read_parquet(sweep / "results" / "trials.parquet")
    assert sorted(trials.trial_id) == [f"peak-{p}__quintic__top1__s{s}" for p in (0, 1) for s in (1, 2, 3)]
    assert (trials.status == "completed").all() and (trials.search_rank == 1).all()
    for _, row in trials.iterrows():
        assert row["train.lr"] == best[row.configuration]  # each cell runs its own best lr
    cells = pd.read_parquet(sweep / "summary" / "cells.parquet")
    peak1 = cells[(cells.metric == "eval_ppl") & (cells.configuration == "peak-1")].iloc[0]
    assert peak1.n_seeds == 3 and peak1.n_paired == 3
    assert peak1.ratio_mean > 0 and pd.notna(peak1.p_ttest)
    own = trials.set_index("trial_id").eval_ppl
    ratios = [own[f"peak-1__quintic__top1__s{s}"] / own[f"peak-0__quintic__top1__s{s}"] for s in (1, 2, 3)]
    assert peak1.ratio_mean == pytest.approx(sum(ratios) / 3)


def test_sequential_seeding_adds_a_round_until_max_seeds(optuna_resumed):
    sweep, _, _, log, _ = optuna_resumed
    rounds = json.loads((sweep / "search" / "_rounds.json").read_text())
    assert rounds == [{"seed": 3, "cells": ["peak-0__quintic", "peak-1__quintic"]}]
    assert "> 0.0001 after 2 seeds: one more seed" in log
    report = (sweep / "summary" / "report.html").read_text()  # the report says how its seeds came about
    assert "<h2>Search</h2>" in report and "Sequential seeding: seeds were added in rounds (seed 3 to " \
        "peak-0__quintic, peak-1__quintic)" in report
    assert re.search(r"peak-1__quintic: 6 trials \([^)]*\d stopped\), best train.lr=", report)


def test_killed_search_resumes_without_rerunning_finished_trials(optuna_resumed):
    sweep, before, searches_done, log, torn = optuna_resumed
    assert len(searches_done) < 2 and torn
    for group in torn:  # the torn experiment is not restored (its searcher would stop at once)
        assert re.search(re.escape(group) + r": continuing in a new experiment from its [1-9]\d* finished", log)
    starts = attempts(sweep)
    assert before and all(starts[t] == 1 for t in before)  # finished trials never ran again
    assert len(_search_dirs(sweep)) == 2 * SAMPLES  # only the missing trials were sampled
    for group in torn:  # the continuation's Optuna study holds the finished trials with their results
        kept = {t for t in before if t.startswith(group)}
        trials = json.loads((sweep / "search" / f"{group}.json").read_text())["trials"]
        assert {t["trial_id"] for t in trials} >= kept
        [state] = (sweep / "tune-search" / group).glob("searcher-state-*.pkl")
        study = pickle.loads(state.read_bytes())["_ot_study"]
        told = {(t.params["train.lr"], t.value) for t in study.trials}
        for tid in kept:
            row = pd.read_parquet(sweep / "trials" / tid / "trial.parquet").iloc[0]
            assert (row["train.lr"], row["eval_loss"]) in told
    status = subprocess.run(CLI + ["sweep", "status", str(sweep)], env=env(), capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    assert "stopped" in status.stdout and f"{2 * SAMPLES + 6}/{2 * SAMPLES + 6} runs done" in status.stdout


def test_random_search_across_the_grid(tmp_path):
    f = search_sweep(tmp_path / "rnd.yaml", "rnd", tmp_path / "store", "random", "sweep", False)
    proc = subprocess.run(CLI + ["sweep", "run", str(f)], env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    sweep = tmp_path / "store" / "rnd"
    search = pd.read_parquet(sweep / "results" / "search.parquet")
    assert len(search) == SAMPLES and set(search.search_group) == {"search"}
    assert set(search.cell) <= {"peak-0__quintic", "peak-1__quintic"}  # the cell is one more choice
    assert (search.status == "stopped").sum() >= 1
    assert search["train.lr"].nunique() == SAMPLES
    assert not (sweep / "results" / "trials.parquet").exists()  # no confirm phase: nothing to pair
    assert "[search] best per search:" in proc.stdout
    assert "will be ignored" not in proc.stdout + proc.stderr  # max_concurrent reaches the random generator
    tune_dir = str(sweep / "tune-search" / "search")  # Tune's saved state, judged before a restore
    assert search_run._state_problem(tune_dir) is None
    for state in (sweep / "tune-search" / "search").glob("basic-variant-state-*"):
        state.unlink()
    assert search_run._state_problem(tune_dir) == "no searcher state was saved"
    # resumed as if killed then: completed trials are kept, the stopped ones sampled again after them
    (sweep / "search" / "search.json").unlink()
    completed = set(search[search.status != "stopped"].trial_id)  # completed, diverged or errored
    proc = subprocess.run(CLI + ["sweep", "resume", str(sweep)], env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"search: continuing in a new experiment from its {len(completed)} finished trial(s)" in proc.stdout
    again = pd.read_parquet(sweep / "results" / "search.parquet")
    assert len(again) == SAMPLES and completed <= set(again.trial_id)
    assert all(n == 1 for t, n in attempts(sweep).items() if t in completed)
    new = set(again.trial_id) - completed
    assert len(new) == SAMPLES - len(completed)
    assert min(map(search_run._trial_index, new)) == max(map(search_run._trial_index, completed)) + 1
