"""Faults lose nothing: driver crashes at several points, failing and diverging trials, storage
that vanishes mid-sweep or is read-only, and two drivers on one sweep."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from localist import io
from tests.helpers import (CLI, attempts, env, held, kill_session, progress_step, same_results, wait_for,
                           write_sweep)
from tests.test_s3_storage import moto_s3, s3_env  # noqa: F401 - the S3 server fixtures

STEPS, CKPT = 100, 10
HELD = "uniform-strict__s1"  # the last of the sweeps' runs to start (two run at once): tests hold it


def sweep_file(tmp_path, name, store, **kw):
    return write_sweep(tmp_path / f"{name}.yaml", name, store, steps=STEPS, checkpoint_every=CKPT, log_every=5,
                       **kw)


def run_cli(args, timeout=300, **extra_env):
    return subprocess.run(CLI + args, env=env(**extra_env), capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the sweep every fault test is compared with."""
    root = tmp_path_factory.mktemp("reference")
    f = sweep_file(root, "rel", root / "store")
    proc = run_cli(["sweep", "run", str(f), "--no-aggregate"], LOCALIST_CACHE=str(root / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "store" / "rel"


def test_driver_crashes_then_resumes_to_the_uninterrupted_result(reference, tmp_path):
    f = sweep_file(tmp_path, "rel", tmp_path / "store")
    sweep = tmp_path / "store" / "rel"
    cache = str(tmp_path / "cache")  # fresh, so data preparation really runs

    # 1. killed while tokenising the corpus
    crashed = run_cli(["sweep", "run", str(f)], LOCALIST_CACHE=cache, LOCALIST_CRASH_AT="prepare")
    assert crashed.returncode == -9
    assert (sweep / "sweep.yaml").exists() and not (sweep / "trials").exists()

    # 2. killed with trials running (driver and its local Ray, all at once); one of them, started
    # after the first two, is held at step 45 until the kill (so it is killed mid-run, not finished)
    proc = subprocess.Popen(CLI + ["sweep", "resume", str(sweep)],
                            env=env(LOCALIST_CACHE=cache, **held(HELD, 46, tmp_path / "never")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def mid_sweep():
            return any(sweep.glob("trials/*/trial.parquet")) and progress_step(sweep, HELD) == 45
        assert wait_for(mid_sweep, 240, proc)
    finally:
        kill_session(proc)
    finished_first = {p.parent.name for p in sweep.glob("trials/*/trial.parquet")}
    assert 1 <= len(finished_first) < 4
    # Tune's save torn by such a kill, both ways (on copies): mended before Tuner.restore (issue 20)
    for how in ("ahead", "behind"):
        check_mended_generator(sweep / "tune", tmp_path / how, how)
    # and this sweep resumed from a torn save: its trial list lacks the held run, which its generator had made
    tear(sweep / "tune", "ahead")

    # 3. killed while writing the consolidated results (trials.parquet written, the rest not)
    crashed = run_cli(["sweep", "resume", str(sweep), "--no-aggregate"], LOCALIST_CACHE=cache,
                      LOCALIST_CRASH_AT="collect")
    assert crashed.returncode == -9
    assert (sweep / "results" / "trials.parquet").exists() and not (sweep / "results" / "steps.parquet").exists()

    # 4. resumed to the end
    done = run_cli(["sweep", "resume", str(sweep), "--no-aggregate"], LOCALIST_CACHE=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    starts = attempts(sweep)
    assert all(starts[t] == 1 for t in finished_first)  # finished trials never ran again
    same_results(lambda kind: pd.read_parquet(sweep / "results" / f"{kind}.parquet"),
                 lambda kind: pd.read_parquet(reference / "results" / f"{kind}.parquet"))


def tear(tune: Path, how: str) -> None:
    """Tune's newest save of a grid torn as a kill between its two files leaves it. 'ahead': the
    trial list lacks HELD, which the generator had made (restored as is, HELD would never run);
    'behind': the generator is still to make HELD, which the list has (it would run twice)."""
    from ray import cloudpickle
    from ray.tune.search.basic_variant import _VariantIterator
    from ray.tune.search.variant_generator import generate_variants

    from orchestrator.sweep import grid_state, tune_state

    if how == "ahead":
        f = Path(tune_state.newest(str(tune)))
        state = json.loads(f.read_text())
        state["trial_data"] = [t for t in state["trial_data"] if json.loads(t[0])["config"]["trial_id"] != HELD]
        f.write_text(json.dumps(state))
        return
    f = sorted(tune.glob(f"{grid_state.GENERATOR_PREFIX}*.json"))[-1]
    gen = cloudpickle.loads(f.read_bytes())
    it = gen["_iterators"][0]
    it.variants = _VariantIterator([v for v in generate_variants(it.unresolved_spec)
                                    if v[1]["config"]["trial_id"] == HELD])
    gen["_finished"] = False
    f.write_bytes(cloudpickle.dumps(gen))


def check_mended_generator(tune: Path, copy: Path, how: str) -> None:
    from ray import cloudpickle

    from orchestrator.sweep import grid_state

    shutil.copytree(tune, copy)
    tear(copy, how)
    said = []
    assert grid_state.mend(str(copy), said.append)
    to_come = 1 if how == "ahead" else 0
    assert len(said) == 1 and said[0].endswith(f"mended, {to_come} still to come"), said
    gen = cloudpickle.loads(sorted(copy.glob(f"{grid_state.GENERATOR_PREFIX}*.json"))[-1].read_bytes())
    assert [v[1]["config"]["trial_id"] for v in gen["_iterators"][0].variants.iterable] == [HELD] * to_come
    assert grid_state.mend(str(copy), said.append) and len(said) == 1  # in step now: nothing to do


@pytest.fixture(scope="module")
def faulted(tmp_path_factory):
    """A sweep with a trial that fails once, one that fails every attempt (after two checkpoints:
    its Tune folder keeps checkpoint_000001, of step 20) and one that diverges."""
    root = tmp_path_factory.mktemp("faulted")
    f = sweep_file(root, "rel", root / "store")
    faults = ",".join([
        f"raise@13:{root / 'once'}#peak-1__linear__s1",  # fails once: retried from step 10
        "raise@25#peak-1__quintic__s1",  # fails on every attempt: errored
        "nan@7#uniform-strict__s1",  # a NaN loss: diverged
    ])
    proc = run_cli(["sweep", "run", str(f)], LOCALIST_FAULT=faults)
    return root / "store" / "rel", proc


def test_failing_and_diverging_trials(reference, faulted):
    sweep, proc = faulted
    assert proc.returncode == 1, proc.stderr[-3000:]  # not every trial has a result
    trials = pd.read_parquet(sweep / "results" / "trials.parquet").set_index("trial_id")
    ref = pd.read_parquet(reference / "results" / "trials.parquet").set_index("trial_id")

    assert trials.loc["peak-1__linear__s1", "status"] == "completed"
    assert trials.loc["peak-1__linear__s1", "eval_loss"] == pytest.approx(ref.loc["peak-1__linear__s1", "eval_loss"],
                                                                           rel=1e-6)
    retried = sorted((sweep / "trials" / "peak-1__linear__s1" / "attempts").glob("*.json"))
    assert [json.loads(a.read_text())["from_checkpoint"] for a in retried] == [False, True]

    errored = trials.loc["peak-1__quintic__s1"]
    assert errored.status == "errored" and "injected fault at step 25" in errored.error
    assert np.isnan(errored.eval_ppl)
    assert len(list((sweep / "trials" / "peak-1__quintic__s1" / "attempts").glob("*.json"))) == 2  # 1 + retries

    diverged = trials.loc["uniform-strict__s1"]
    # losses are read at logging time: the NaN of step 7 is seen at the next log (step 10) and
    # recorded at step 7, where it appeared
    assert diverged.status == "diverged" and diverged.final_step == 10 and np.isnan(diverged.eval_ppl)
    steps = pd.read_parquet(sweep / "trials" / "uniform-strict__s1" / "steps.parquet")
    bad = steps[(steps.split == "train") & steps.loss.isna()]
    assert list(bad.step) == [7]
    assert trials.loc["peak-0__linear__s1", "status"] == "completed"  # the sweep went on

    excluded = pd.read_parquet(sweep / "summary" / "excluded.parquet")
    assert {"peak-1__quintic__s1", "uniform-strict__s1"} <= set(excluded.trial_id)
    cells = pd.read_parquet(sweep / "summary" / "cells.parquet")
    ppl = cells[cells.metric == "eval_ppl"]
    assert (ppl.n_seeds.fillna(0) <= 1).all()
    for name in ("peak-1__quintic__s1", "uniform-strict__s1"):
        assert name in (sweep / "summary" / "report.html").read_text()
    status = run_cli(["sweep", "status", str(sweep)])
    assert "errored" in status.stdout and "injected fault" in status.stdout and "diverged" in status.stdout


ERRORED = "peak-1__quintic__s1"  # the faulted sweep's trial that failed every attempt, at step 25


def torn_copy(faulted, tmp_path) -> Path:
    """A copy of the faulted sweep whose Tune state names a checkpoint gone from storage, with a
    newer whole one there: as a driver killed after Tune deleted a trial's older checkpoint (while
    registering the next) but before it saved its experiment state leaves it. Made on purpose:
    the errored trial's checkpoint_000001 (step 20), which the state names, becomes checkpoint_000002."""
    copy = tmp_path / "rel"
    shutil.copytree(faulted[0], copy)
    trial = copy / "tune" / ERRORED
    (trial / "checkpoint_000001").rename(trial / "checkpoint_000002")
    return copy


def test_resume_continues_from_the_newest_checkpoint_on_storage(reference, faulted, tmp_path):
    """Issue 23: such a trial failed every retry of `resume` ('Could not recover from checkpoint as it
    does not exist on storage anymore'). Now it continues from the newest whole checkpoint."""
    sweep = torn_copy(faulted, tmp_path)
    before = attempts(sweep)
    proc = run_cli(["sweep", "resume", str(sweep), "--no-aggregate"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (f"[sweep] {ERRORED}: Tune's saved state names checkpoint_000001, which is gone from storage: "
            "it resumes from checkpoint_000002 (step 20)") in proc.stdout
    trials = pd.read_parquet(sweep / "results" / "trials.parquet").set_index("trial_id")
    ref = pd.read_parquet(reference / "results" / "trials.parquet").set_index("trial_id")
    assert trials.loc[ERRORED, "status"] == "completed"
    assert trials.loc[ERRORED, "eval_loss"] == pytest.approx(ref.loc[ERRORED, "eval_loss"], rel=1e-6)
    assert attempts(sweep) == {**before, ERRORED: before[ERRORED] + 1}  # nothing else ran again
    assert json.loads((sweep / "trials" / ERRORED / "attempts" / "003.json").read_text())["from_checkpoint"]
    assert f"[{ERRORED}] resumed from step 20" in proc.stdout
    steps = pd.read_parquet(sweep / "trials" / ERRORED / "steps.parquet")
    assert not steps.duplicated(["split", "step"]).any() and steps.step.max() == STEPS


def saved_trial(tune_uri: str, name: str):
    """The trial `name` as Tune restores it from the experiment's newest saved state."""
    from ray.tune.experiment.trial import Trial

    from orchestrator.sweep import tune_state

    for trial_json, meta_json in json.loads(io.read_text(tune_state.newest(tune_uri)))["trial_data"]:
        if json.loads(trial_json)["relative_logdir"] == name:
            trial = Trial.from_json_state(trial_json, stub=True)
            trial.restore_run_metadata(meta_json)
            return trial
    raise AssertionError(f"no trial {name} in the saved state")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_mended_state_names_the_newest_whole_checkpoint(faulted, tmp_path, where, request):
    """Before `Tuner.restore`, each trial Tune will resume is pointed at its newest checkpoint on
    storage that is whole (a copy cut short is passed over), or at none; its next checkpoint gets
    a folder of its own. On local paths and on S3."""
    import pyarrow.fs as pafs

    from orchestrator.sweep import tune_state

    sweep = torn_copy(faulted, tmp_path)
    newer = sweep / "tune" / ERRORED / "checkpoint_000003"  # the next one, its copy cut short by the kill
    shutil.copytree(newer.parent / "checkpoint_000002", newer)
    (newer / "model.safetensors").write_bytes((newer / "model.safetensors").read_bytes()[:1000])
    tune_uri = str(sweep / "tune")
    if where == "s3":
        from tests.test_s3_storage import BUCKET

        _, fs = request.getfixturevalue("s3_env")
        pafs.copy_files(tune_uri, f"{BUCKET}/mend/tune", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        tune_uri = f"s3://{BUCKET}/mend/tune"
    said = []
    assert tune_state.mend(tune_uri, said.append) == [ERRORED]
    assert said == [f"[sweep] {ERRORED}: Tune's saved state names checkpoint_000001, which is gone from storage: "
                    "it resumes from checkpoint_000002 (step 20)"]
    trial = saved_trial(tune_uri, ERRORED)
    latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
    assert latest.checkpoint.path.endswith(f"/{ERRORED}/checkpoint_000002") and latest.metrics["step"] == 20
    assert trial.storage.current_checkpoint_index == 3  # the next is checkpoint_000004
    state = io.read_text(tune_state.newest(tune_uri))
    assert tune_state.mend(tune_uri, said.append) == [] and io.read_text(tune_state.newest(tune_uri)) == state

    io.delete(io.join(tune_uri, ERRORED, "checkpoint_000002"))  # no whole checkpoint left
    assert tune_state.mend(tune_uri, said.append) == [ERRORED]
    assert said[-1] == (f"[sweep] {ERRORED}: Tune's saved state names checkpoint_000002, which is gone from "
                        "storage, and no whole checkpoint is left: it starts again from step 0")
    trial = saved_trial(tune_uri, ERRORED)
    assert trial.run_metadata.checkpoint_manager.latest_checkpoint_result is None
    assert trial.storage.current_checkpoint_index == 3


def test_storage_vanishing_mid_sweep_keeps_finished_trials(tmp_path):
    store = tmp_path / "store"
    f = write_sweep(tmp_path / "v.yaml", "v", store, steps=100, checkpoint_every=10, log_every=5)
    go = tmp_path / "go"  # a trial is held until the storage has gone: the sweep cannot end before
    proc = subprocess.Popen(CLI + ["sweep", "run", str(f)], env=env(**held(HELD, 46, go)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: len(list(store.glob("v/trials/*/trial.parquet"))) >= 1, 240, proc)
        store.rename(tmp_path / "moved")  # the mount went away and something else is at its path
        blocker = tmp_path / "blocker"
        blocker.write_text("not a directory any more")
        for i in range(50):  # running trials may recreate folders under the old path meanwhile
            try:
                os.replace(blocker, store)
                break
            except (IsADirectoryError, OSError):
                store.rename(tmp_path / f"recreated-{i}")
        go.touch()
        out, err = proc.communicate(timeout=240)
    finally:
        kill_session(proc)
    assert proc.returncode not in (0, -9)
    assert "error: storage" in err and str(store) in err, err[-3000:]
    assert "Traceback" not in err.split("error: storage")[-1]
    for done in (tmp_path / "moved").glob("v/trials/*/trial.parquet"):
        row = pd.read_parquet(done).iloc[0]
        assert row.status == "completed" and np.isfinite(row.eval_loss)
        for kind in ("steps", "layers", "attention"):
            assert len(pd.read_parquet(done.parent / f"{kind}.parquet")) > 0
    assert not list((tmp_path / "moved").rglob("*.tmp-*"))  # no partial file left visible


def test_read_only_storage_is_refused_before_anything_runs(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here, so no read-only directory can be made as root")
    try:
        f = write_sweep(tmp_path / "ro.yaml", "ro", ro / "results")
        proc = run_cli(["sweep", "run", str(f)])
        assert proc.returncode == 2
        assert "storage" in proc.stderr and "not writable" in proc.stderr and str(f) in proc.stderr
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(ro)])


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    import pyarrow as pa

    target = str(tmp_path / "t.parquet")
    io.write_parquet(pa.table({"x": [1, 2, 3]}), target)

    class Boom(Exception):
        pass

    real = io.os.replace

    def fail(*a):
        raise Boom("disk full")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(Boom):
        io.write_parquet(pa.table({"x": [9] * 1000}), target)
    monkeypatch.setattr(io.os, "replace", real)
    assert io.read_parquet(target).column("x").to_pylist() == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_second_driver_on_the_same_sweep_is_refused(tmp_path):
    f = write_sweep(tmp_path / "c.yaml", "c", tmp_path / "store", steps=100, log_every=5)
    go = tmp_path / "go"  # a trial is held until both refusals are seen: the first driver is still running then
    first = subprocess.Popen(CLI + ["sweep", "run", str(f), "--no-aggregate"], env=env(**held(HELD, 46, go)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: list(tmp_path.glob("store/c/trials/*/progress.json")), 240, first)
        second = run_cli(["sweep", "run", str(f)], timeout=120)
        assert second.returncode == 2
        assert "already being run by pid" in second.stderr and str(first.pid) in second.stderr
        resumed = run_cli(["sweep", "resume", str(tmp_path / "store" / "c")], timeout=120)
        assert resumed.returncode == 2 and "already being run" in resumed.stderr
        go.touch()
        _, err = first.communicate(timeout=240)
        assert first.returncode == 0, err[-3000:]
    finally:
        kill_session(first)
    trials = pd.read_parquet(tmp_path / "store" / "c" / "results" / "trials.parquet")
    assert len(trials) == 5 and (trials.status == "completed").all()
    assert set(attempts(tmp_path / "store" / "c").values()) == {1}


def test_a_completed_trials_checkpoint_is_emptied_not_removed(tmp_path):
    """A driver killed after a trial completed but before Tune saved it as finished resumes that
    trial from its checkpoint, and Tune fails a trial whose checkpoint folder is gone (seen in this
    file's crash test): so the live cleaner frees the space but leaves the folder, with a marker."""
    import types

    import pyarrow.fs as pafs

    from orchestrator import layout
    from orchestrator.sweep.tuners import checkpoint_cleaner

    trial_dir = tmp_path / "tune" / "peak-1__quintic__s1"
    ckpt = trial_dir / "checkpoint_000000"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "model" / "model.safetensors").write_bytes(b"\0" * 4096)
    (trial_dir / "result.json").write_text("{}\n")
    storage = types.SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), trial_fs_path=str(trial_dir))
    checkpoint_cleaner().on_trial_complete(0, [], types.SimpleNamespace(storage=storage))
    assert [p.name for p in ckpt.iterdir()] == [layout.CHECKPOINT_EMPTIED]
    assert (trial_dir / "result.json").read_text() == "{}\n"  # only checkpoints are touched


def test_after_fit_checkpoints_go_unless_a_trial_may_resume(tmp_path):
    """Once Tune's state is final: checkpoints of trials with a result and of searches that ended go,
    in every Tune experiment of the sweep; an errored trial keeps its own for `resume`."""
    from orchestrator import layout
    from orchestrator.sweep.tuners import finished_checkpoints_removed

    sweep = str(tmp_path)
    folders = {"tune/done__s1": True, "tune/failed__s1": False, "tune-seed3/done__s3": True,
               "tune-search/g/g__t001": True, "tune-search/h/h__t001": False}  # search h has not ended
    for folder in folders:
        (tmp_path / folder / "checkpoint_000000").mkdir(parents=True)
        (tmp_path / "trials" / folder.rsplit("/", 1)[1]).mkdir(parents=True)
    for run in ("done__s1", "done__s3"):
        (tmp_path / "trials" / run / "trial.parquet").write_bytes(b"")
    io.write_text(layout.search_file(sweep, "g"), "{}")
    (tmp_path / "tune" / "tuner.pkl").write_bytes(b"")  # Tune's own files are left alone
    finished_checkpoints_removed(sweep)
    assert {f: (tmp_path / f / "checkpoint_000000").exists() for f in folders} == {f: not gone for f, gone in folders.items()}
    assert (tmp_path / "tune" / "tuner.pkl").exists()
