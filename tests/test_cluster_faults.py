"""A cluster's real failures on the two-node loopback cluster (benchmarks/loopback.py) with S3
storage (moto): a worker node lost mid-trial, the head lost with the driver, a stop with notice
(SIGTERM, `sweep stop`), and a cluster that cannot reach the storage. Every sweep is compared with
the same sweep run undisturbed (benchmarks/undisturbed.py): results equal, eval losses exactly.

One cluster serves the module: the head-loss scenario replaces it with a brand-new one (new temp
folders and ports, the S3 credentials in its nodes' environment) that the later tests use.
Trials are held where a test wants them with the `wait` fault (tests/helpers.held), never raced.
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
from tests.helpers import CLI, same_results, wait_for, write_sweep
from tests.test_cluster import REPO
from tests.test_s3_storage import BUCKET, moto_s3  # noqa: F401 - the S3 server fixture

STEPS, CKPT, HOLD = 40, 8, 10  # trials hold before step HOLD, after their first checkpoint (step 8)
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
def lost(clusters, moto_s3, tmp_path_factory):
    """A sweep submitted to the cluster (its driver a Ray Job on the head) loses its worker node with
    a trial held there after its first checkpoint; a new worker node joins; then the whole head
    goes (the driver with it) with two trials held mid-run and one finished, and the sweep is
    resumed against a brand-new cluster. Returns what the test functions check."""
    s3_env, fs = moto_s3
    tmp = tmp_path_factory.mktemp("lost")
    sweep_file(tmp, "lost")
    go = {run: tmp / f"go-{run}" for run in RUNS}
    faults = ",".join(f"wait@{HOLD}:{go[run]}#{run}" for run in RUNS)
    old = clusters.now
    sweep = f"{BUCKET}/faults/lost"
    t0 = time.time()
    sub = subprocess.run(CLI + ["submit", "lost.yaml", "--address", old.address, "--env", f"LOCALIST_FAULT={faults}"],
                         cwd=tmp, env=clusters.client(s3_env), capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    out: dict = {"sweep": sweep}

    def held_runs() -> set[str]:
        return {run for run in RUNS for p in [go[run]] if held(p)}

    def wait(what: str, ok, timeout: float = 240) -> None:
        end = time.time() + timeout
        while not ok():
            assert time.time() < end, f"{what}: not within {timeout:.0f} s"
            time.sleep(0.5)

    # 1. Two trials held after their first checkpoint, one on each node (1 CPU each).
    wait("two trials held", lambda: len(held_runs()) == 2)
    on = {run: attempts_of(fs, sweep, run)[0]["node_id"] for run in held_runs()}
    lost_run = next(r for r, n in on.items() if n == old.ids["worker"])
    head_run = next(r for r, n in on.items() if n == old.ids["head"])
    out.update(lost_run=lost_run, head_run=head_run, dead_node=old.ids["worker"], first_hold_s=time.time() - t0)

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
    out["attempts_before"] = {run: attempts_of(fs, sweep, run) for run in RUNS}

    # 3. The head is lost with the driver (and the rest of the old cluster): only S3 survives.
    old.kill("head")
    old.kill("worker2")
    new = clusters.now = clusters.new(s3_env)  # new temp folders, ports and node ids; S3 access of its own
    for marker in go.values():
        marker.touch()
    t1 = time.time()
    resumed = subprocess.run(CLI + ["sweep", "resume", f"s3://{sweep}", "--address", new.gcs],
                             env=clusters.client(s3_env), capture_output=True, text=True, timeout=600)
    out.update(resume=resumed, resume_s=time.time() - t1, total_s=time.time() - t0, new_ids=dict(new.ids))
    out["attempts"] = {run: attempts_of(fs, sweep, run) for run in RUNS}
    print(f"\nnode and head lost: first hold {out['first_hold_s']:.0f}s, dead node noticed in {out['noticed_s']:.1f}s, "
          f"resume {out['resume_s']:.0f}s, all {out['total_s']:.0f}s")
    return out


def test_a_lost_worker_nodes_trial_continues_on_another_node_from_its_checkpoint(lost, moto_s3, reference):
    _, fs = moto_s3
    assert lost["noticed_s"] < 60  # (health checks every second, 5 misses: about 5 s)
    first, second = lost["attempts"][lost["lost_run"]][:2]
    assert first["node_id"] == lost["dead_node"] and first["start_step"] == 0
    # Tune retried it at once, on a node that survived or joined, from its S3 checkpoint (step 8)
    assert second["node_id"] != lost["dead_node"] and second["from_checkpoint"] and second["start_step"] == CKPT
    assert second in lost["attempts_before"][lost["lost_run"]]  # before the head was lost
    nodes = {a["node_id"] for attempts in lost["attempts_before"].values() for a in attempts}
    assert lost["new_node"] in nodes  # the worker node that joined later took a pending trial
    assert lost["resume"].returncode == 0, lost["resume"].stdout[-3000:] + lost["resume"].stderr[-3000:]
    assert_same_as_undisturbed(fs, lost["sweep"], reference)


def test_a_lost_head_resumes_on_a_new_cluster_from_s3_alone(lost, moto_s3, reference):
    _, fs = moto_s3
    proc = lost["resume"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    attempts = lost["attempts"]
    assert len(attempts[lost["head_run"]]) == 1  # finished before the head was lost: never run again
    for run in RUNS:
        if run == lost["head_run"]:
            continue
        last = attempts[run][-1]  # the one on the new cluster continued from the step-8 checkpoint
        assert last["node_id"] in lost["new_ids"].values() and last["from_checkpoint"], attempts[run]
        assert last["start_step"] == CKPT
        assert len(attempts[run]) == len(lost["attempts_before"][run]) + 1
    assert_same_as_undisturbed(fs, lost["sweep"], reference)
