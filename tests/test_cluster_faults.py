"""A cluster's real failures on the two-node loopback cluster (benchmarks/loopback.py) with S3
storage (moto): a cluster that cannot reach the storage, then one sweep that loses a worker node
mid-trial, then its head with the driver, is resumed on a brand-new cluster, stopped there with
notice (SIGTERM to the driver, one trial able to checkpoint and one held past the grace), and
resumed to the end through flaky storage (tests/flaky_proxy.py in front of the S3 server), equal
to the same sweep run undisturbed (benchmarks/undisturbed.py): results and summary, eval losses
exactly. Each test function checks one of these on the shared scenario (one sweep, to stay inside
the suite's time). `sweep stop` from another shell: tests/test_preempt.py.

Trials are held where the scenario wants them with the `wait` fault (localist/faults.py), never
raced; a held trial leaves a `<marker>.held-<run>` file.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmarks import undisturbed
from benchmarks.loopback import LocalCluster, node_env
from localist import io
from tests.flaky_proxy import FlakyProxy
from tests.helpers import CLI, same_results, write_sweep
from tests.test_s3_storage import BUCKET, moto_s3  # noqa: F401 - the S3 server fixture

STEPS, CKPT, HOLD = 40, 8, 10  # trials hold before step HOLD, after their first checkpoint (step 8)
GRACE = 30  # s, the SIGTERMed driver's: ample for a trial to checkpoint, and it runs out for the one held
RUNS = ("peak-0__linear__s1", "peak-1__linear__s1", "peak-1__quintic__s1")


class Clusters:
    """The module's cluster now, and every one it started (all stopped at the end)."""

    def __init__(self):
        self.all: list[LocalCluster] = []
        self.now = self.new()

    def new(self, s3_env: dict | None = None) -> LocalCluster:
        c = LocalCluster(node_env(secrets.token_hex(16), s3_env))
        self.all.append(c)
        return c.start()

    def client(self, s3_env: dict) -> dict:
        """A shell that reaches the cluster now and the S3 server."""
        from tests.test_cluster import client_env

        return client_env(self.now, s3_env)


@pytest.fixture(scope="module")
def clusters():
    t0 = time.time()
    c = Clusters()
    print(f"\ncluster: started in {time.time() - t0:.1f}s")
    try:
        yield c
    finally:
        for one in c.all:
            one.stop()


def sweep_file(folder: Path, name: str, storage: str = f"s3://{BUCKET}/faults") -> Path:
    """Three runs of the tiny trial (peak-0, peak-1 linear and quintic), 1 CPU each, checkpoints every 8 steps."""
    return write_sweep(folder / f"{name}.yaml", name, storage, steps=STEPS, checkpoint_every=CKPT, log_every=4,
                       eval_every=20, comparators={})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep undisturbed: its runs trained in this process, collected and aggregated."""
    root = tmp_path_factory.mktemp("undisturbed")
    t0 = time.time()
    uri = undisturbed.run(str(sweep_file(root, "ref")), str(root / "store"))
    print(f"\nundisturbed reference: {time.time() - t0:.1f}s")
    return Path(uri)


def s3_json(fs, path: str) -> dict:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def attempts_of(fs, sweep: str, run: str) -> list[dict]:
    """The attempt records of a run on S3, in order."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(f"{sweep}/trials/{run}/attempts", allow_not_found=True))
    return [s3_json(fs, i.path) for i in sorted(infos, key=lambda i: i.path)]


def results_on_s3(fs, sweep: str):
    return lambda kind: pq.read_table(f"{sweep}/results/{kind}.parquet", filesystem=fs).to_pandas()


def local_results(sweep: Path):
    return lambda kind: pd.read_parquet(sweep / "results" / f"{kind}.parquet")


def assert_same_as_undisturbed(fs, sweep: str, reference: Path) -> None:
    same_results(results_on_s3(fs, sweep), local_results(reference))
    mine = results_on_s3(fs, sweep)("trials").set_index("trial_id")
    ref = local_results(reference)("trials").set_index("trial_id")
    assert (mine.status == "completed").all()
    assert mine.eval_loss.to_dict() == ref.eval_loss.to_dict()  # exactly: step-seeded resume
    cells = pq.read_table(f"{sweep}/summary/cells.parquet", filesystem=fs).to_pandas()
    same_results_cells = pd.read_parquet(reference / "summary" / "cells.parquet")
    key = ["metric", "configuration", "schedule"]
    assert sorted(cells.columns) == sorted(same_results_cells.columns)
    a, b = (x.sort_values(key).reset_index(drop=True) for x in (cells, same_results_cells))
    pd.testing.assert_frame_equal(a, b[a.columns])
    assert fs.get_file_info(f"{sweep}/summary/report.html").size > 0


def held(marker: Path) -> set[str]:
    """The runs that have been held at `marker` (localist.faults 'wait')."""
    return {p.name.split(".held-", 1)[1] for p in marker.parent.glob(f"{marker.name}.held-*")}


def test_a_cluster_that_lacks_the_storage_credentials_is_refused_before_trials_start(clusters, moto_s3, tmp_path):
    s3_env, fs = moto_s3
    f = sweep_file(tmp_path, "nocreds")
    t0 = time.time()
    proc = subprocess.run(CLI + ["sweep", "run", str(f), "--address", clusters.now.gcs], env=clusters.client(s3_env),
                          capture_output=True, text=True, timeout=240)
    print(f"\nrefused in {time.time() - t0:.1f}s")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = proc.stderr
    assert f"storage s3://{BUCKET}/faults/nocreds: 2 of 2 node(s)" in err, err[-3000:]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        assert name in err.split("they lack", 1)[1]
    assert "localist submit" in err
    assert fs.get_file_info(f"{BUCKET}/faults/nocreds/sweep.yaml").type.name == "NotFound"  # no saved spec
    assert fs.get_file_info(f"{BUCKET}/faults/nocreds/trials").type.name == "NotFound"  # no trial started


@pytest.fixture(scope="module")
def scenario(clusters, moto_s3, tmp_path_factory):
    """The sweep and everything done to it (see the module's docstring); what the tests check."""
    s3_env, fs = moto_s3
    tmp = tmp_path_factory.mktemp("faults")
    sweep_file(tmp, "chaos")
    sweep = f"{BUCKET}/faults/chaos"
    uri = f"s3://{sweep}"
    go = {run: tmp / f"go-{run}" for run in RUNS}
    old = clusters.now
    out: dict = {"sweep": sweep}
    t0 = time.time()

    def held_runs() -> set[str]:
        return {run for run in RUNS if held(go[run])}

    def wait(what: str, ok, timeout: float = 240, proc=None) -> None:
        end = time.time() + timeout
        while not ok():
            assert time.time() < end, f"{what}: not within {timeout:.0f} s"
            assert proc is None or proc.poll() is None, f"{what}: the driver ended\n{proc.communicate()[0][-3000:]}"
            time.sleep(0.5)

    def attempts() -> dict[str, list[dict]]:
        return {run: attempts_of(fs, sweep, run) for run in RUNS}

    # 1. Submitted as a Ray Job (the driver on the head): two trials held after their first
    # checkpoint, one on each node (1 CPU each).
    faults = ",".join(f"wait@{HOLD}:{go[run]}#{run}" for run in RUNS)
    sub = subprocess.run(CLI + ["submit", "chaos.yaml", "--address", old.address, "--env", f"LOCALIST_FAULT={faults}"],
                         cwd=tmp, env=clusters.client(s3_env), capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    wait("two trials held", lambda: len(held_runs()) == 2)
    on = {run: attempts_of(fs, sweep, run)[0]["node_id"] for run in held_runs()}
    lost_run = next(r for r, n in on.items() if n == old.ids["worker"])
    head_run = next(r for r, n in on.items() if n == old.ids["head"])
    out.update(lost_run=lost_run, head_run=head_run, dead_node=old.ids["worker"])

    # 2. The worker node is lost; the head's trial goes on and finishes; a new worker node joins.
    (go[lost_run].parent / f"{go[lost_run].name}.held-{lost_run}").unlink()  # its retry holds there again
    killed = time.time()
    old.kill("worker")
    go[head_run].touch()
    wait("the dead node noticed", lambda: out["dead_node"] not in {n["node_id"] for n in old.nodes()}, 120)
    out["noticed_s"] = time.time() - killed
    out["new_node"] = old.add("worker2")
    third = next(r for r in RUNS if r not in on)
    wait("the retry and the third run held", lambda: {lost_run, third} <= held_runs())
    wait("the head's trial finished", lambda: fs.get_file_info(f"{sweep}/trials/{head_run}/trial.parquet").size > 0)
    out["before_head_lost"] = attempts()

    # 3. The head is lost with the driver (and the rest of the old cluster): only S3 survives. The
    # sweep is resumed against a brand-new cluster (new temp folders, ports and node ids; its nodes
    # with S3 access of their own, as a new machine's role), and there stopped by SIGTERM to the driver.
    old.kill("head")
    old.kill("worker2")
    new = clusters.now = clusters.new(s3_env)
    out["new_ids"] = set(new.ids.values())
    shell = clusters.client(s3_env)

    def driver(args: list[str], fault: str) -> subprocess.Popen:
        return subprocess.Popen(CLI + args + ["--address", new.gcs], env={**shell, "LOCALIST_FAULT": fault},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def stop_taken() -> bool:  # the driver wrote (or took) the request the trials watch for
        return fs.get_file_info(f"{sweep}/stop.json").type.name == "File"

    # Of the two trials held before step 20, one goes on once the driver has put the request on
    # storage (it stops at a checkpoint), the other stays held (it cannot): the grace runs out for it.
    go3 = {run: tmp / f"go3-{run}" for run in RUNS}
    unheld = [run for run in RUNS if run != head_run]
    proc = driver(["sweep", "resume", uri, "--no-aggregate", "--grace", str(GRACE)],
                  ",".join(f"wait@20:{go3[run]}#{run}" for run in unheld))
    try:
        wait("both trials held at step 20", lambda: all(held(go3[run]) for run in unheld), 300, proc)
        out["after_head_lost"] = attempts()
        proc.send_signal(signal.SIGTERM)
        signalled = time.time()
        wait("the stop request on storage", stop_taken, 60, proc)
        time.sleep(3 * 2.0)  # (the trials' watchers look every 2 s; a late look only stops them later)
        released, kept = unheld
        go3[released].touch()
        first, _ = proc.communicate(timeout=GRACE + 60)  # the grace, and Tune's stop
        out.update(sigterm=first, sigterm_code=proc.returncode, sigterm_exit_s=time.time() - signalled,
                   released=released, kept=kept)
    finally:
        if proc.poll() is None:
            proc.kill()
    out["after_sigterm"] = attempts()
    out["no_driver"] = subprocess.run(CLI + ["sweep", "stop", uri], env=shell, capture_output=True, text=True,
                                      timeout=120)

    # 4. Resumed to the end through a proxy that fails S3 requests for the first part of the run
    # (every third request until 24 faults: 500s, resets, slow answers; every fourth of our own
    # files' requests fails more often than pyarrow's per-request attempts).
    go3[kept].touch()
    proxy = FlakyProxy(s3_env["AWS_ENDPOINT_URL"], every=3, budget=24, slow_s=0.5, hard_every=4,
                       repeat=io.S3_ATTEMPTS, hard=lambda path: "/tune/" not in path).start()
    proxy.active = True
    flaky = f"{uri}?endpoint_override={proxy.endpoint}&scheme=http"  # every node and the driver go through it
    try:
        out["done"] = subprocess.run(CLI + ["sweep", "resume", flaky, "--address", new.gcs], env=shell,
                                     capture_output=True, text=True, timeout=600)
    finally:
        proxy.stop()
    out["faults"] = proxy.faults
    out["attempts"] = attempts()
    print(f"\nscenario: dead node noticed in {out['noticed_s']:.1f}s, SIGTERM to exit {out['sigterm_exit_s']:.0f}s, "
          f"{len(proxy.faults)} storage faults, all {time.time() - t0:.0f}s")
    return out


def test_a_lost_worker_nodes_trial_continues_on_another_node_from_its_checkpoint(scenario):
    assert scenario["noticed_s"] < 60  # (health checks every second, 5 misses: about 5 s)
    first, second = scenario["before_head_lost"][scenario["lost_run"]]
    assert first["node_id"] == scenario["dead_node"] and first["start_step"] == 0
    # Tune retried it at once, on a node that survived or joined, from its S3 checkpoint (step 8)
    assert second["node_id"] != scenario["dead_node"] and second["from_checkpoint"] and second["start_step"] == CKPT
    nodes = {a["node_id"] for attempts in scenario["before_head_lost"].values() for a in attempts}
    assert scenario["new_node"] in nodes  # the worker node that joined later took a pending trial


def test_a_lost_head_resumes_on_a_new_cluster_from_s3_alone(scenario):
    attempts = scenario["after_head_lost"]
    for run in RUNS:
        if run == scenario["head_run"]:  # finished before the head was lost: never run again
            assert len(attempts[run]) == 1 and len(scenario["attempts"][run]) == 1
            continue
        last = attempts[run][-1]  # on the new cluster, from the step-8 checkpoint
        assert last["node_id"] in scenario["new_ids"] and last["from_checkpoint"] and last["start_step"] == CKPT
        assert len(attempts[run]) == len(scenario["before_head_lost"][run]) + 1


def test_sigterm_stops_every_running_trial_at_a_checkpoint_and_resume_redoes_no_step(scenario):
    out = scenario["sigterm"]
    assert scenario["sigterm_code"] == 130, out[-4000:]
    assert "[sweep] stop requested (SIGTERM to the driver): every running trial saves a checkpoint" in out
    assert f"continue with: localist sweep resume s3://{scenario['sweep']}" in out.splitlines()[-1]
    stopped = scenario["after_sigterm"][scenario["released"]][-1]
    assert stopped["stopped_at_step"] >= 20, stopped
    resumed = scenario["attempts"][scenario["released"]][len(scenario["after_sigterm"][scenario["released"]])]
    assert resumed["from_checkpoint"] and resumed["start_step"] == stopped["stopped_at_step"]  # no step redone


def test_a_trial_that_cannot_checkpoint_does_not_hold_the_driver_past_its_grace(scenario):
    out = scenario["sigterm"]
    # the kept trial was held before step 20 when the stop came: it could not save a checkpoint
    assert f"1 trial(s) did not checkpoint within the {GRACE} s grace ({scenario['kept']})" in out, out[-3000:]
    assert scenario["sigterm_exit_s"] < GRACE + 60  # the grace, and Tune's stop: bounded (not timed)
    kept = scenario["attempts"][scenario["kept"]]
    assert "stopped_at_step" not in kept[-2] and kept[-1]["start_step"] == 16  # from its last checkpoint
    no_driver = scenario["no_driver"]
    assert no_driver.returncode == 2 and "no driver is running the sweep" in no_driver.stderr, no_driver.stderr


def test_the_sweep_ends_as_the_undisturbed_one(scenario, moto_s3, reference):
    _, fs = moto_s3
    done = scenario["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_as_undisturbed(fs, scenario["sweep"], reference)


def test_flaky_storage_is_retried_logged_and_leaves_no_partial_file(scenario, moto_s3):
    import pyarrow.fs as pafs

    _, fs = moto_s3
    kinds = {kind for kind, _, _ in scenario["faults"]}
    assert len(scenario["faults"]) == 24 and kinds == {"500", "reset", "slow"}
    done = scenario["done"]
    assert io.RETRY_TAG not in done.stdout + done.stderr  # not on the console
    logs = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(f"{scenario['sweep']}/logs")))
    with fs.open_input_stream(logs[-1]) as f:
        log = f.read().decode()
    retried = [line for line in log.splitlines() if io.RETRY_TAG in line]
    assert retried, "no storage retry in the driver log"  # the hard faults outlived pyarrow's attempts
    print(f"\n{len(retried)} storage retries in the driver log, e.g. {retried[0][:200]}")
    parquet = [i for i in fs.get_file_info(pafs.FileSelector(scenario["sweep"], recursive=True))
               if i.path.endswith(".parquet")]
    assert len(parquet) > 10
    for info in parquet:  # every Parquet file whole: its footer reads and its rows are there
        pq.read_metadata(info.path, filesystem=fs)
