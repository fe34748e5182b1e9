"""A chaos soak: N trials on the loopback cluster (benchmarks/loopback.py, S3 storage on moto) while
a killer takes down a random worker node K times at random moments, starting a new one each time,
as spot instances come and go. Bounded in time; stops everything it started, by pid.

    python -m benchmarks.chaos [--trials 12] [--kills 5] [--workers 2] [--steps 60] [--seed 0]

The head runs no trials (0 CPUs); each kill comes a random 1-8 s after some worker node is seen
running a trial, and takes a random one of the nodes that are. The last line
printed is one JSON object: faults injected and survived (every trial a kill interrupted finished
later), trials completed and lost, the largest |eval loss difference| against the same sweep run
undisturbed (benchmarks/undisturbed.py: 0 when resume is exact), the median and worst recovery
(seconds from a kill to the next start of each trial it interrupted) and the training steps redone
(the steps a killed trial had reached beyond the checkpoint its next start resumed from).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import undisturbed
from benchmarks.common import machine
from benchmarks.loopback import LocalCluster, node_env, s3_filesystem, s3_server
from localist import trial_files
from localist.config import QUICK_TRIAL
from orchestrator import layout

BUCKET = "chaos"
CLI = [sys.executable, "-m", "orchestrator.cli"]


def sweep_file(folder: Path, trials: int, steps: int, kills: int) -> Path:
    """`trials` runs of the quick trial config (one peak each), a checkpoint every sixth of the steps."""
    base = json.loads(json.dumps(QUICK_TRIAL))
    every = max(steps // 6, 1)
    base["train"].update(steps=steps, eval_every=steps // 2, log_every=1)
    peaks = {f"p{i:02d}": {"locality": {"peak": round(i / max(trials - 1, 1), 4)}} for i in range(trials)}
    spec = {"name": "soak", "storage": f"s3://{BUCKET}/sweeps", "base": base,
            "grid": {"configuration": peaks, "schedule": {"linear": {"locality": {"power": 1}}}, "seeds": [1]},
            "resources": {"cpu": 1}, "retries": kills + 1, "checkpoint_every": every}
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Storage:
    """The sweep's trial records on S3, read as the killer needs them (the AWS_* of the server set here)."""

    def __init__(self, sweep_uri: str):
        self.sweep = sweep_uri

    def attempts(self, run: str) -> list[dict]:
        d = layout.trial_dir(self.sweep, run)
        out = []
        for n in range(1, trial_files.attempts(d) + 1):
            try:
                out.append(trial_files.read_attempt(d, n))
            except (OSError, ValueError):  # being written
                pass
        return out

    def done(self, run: str) -> bool:
        return trial_files.has_result(layout.trial_dir(self.sweep, run))

    def step(self, run: str) -> int:
        return (trial_files.read_progress(layout.trial_dir(self.sweep, run)) or {}).get("step", 0)

    def result(self, run: str) -> dict:
        return trial_files.read_result(layout.trial_dir(self.sweep, run), ["status", "eval_loss"])


def soak(trials: int, kills: int, workers: int, steps: int, seed: int, timeout: float, log) -> dict:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    spec = sweep_file(root, trials, steps, kills)
    runs = [f"p{i:02d}__linear__s1" for i in range(trials)]
    t0 = time.time()
    reference = undisturbed.eval_losses(undisturbed.run(str(spec), str(root / "ref"), aggregate=False))
    log(f"undisturbed reference: {time.time() - t0:.0f} s")
    server, s3_env = s3_server()
    cluster = driver = None
    kills_done: list[dict] = []
    try:
        s3_filesystem(s3_env).create_dir(BUCKET)
        os.environ.update(s3_env)  # this process reads the sweep's records through localist.io
        cluster = LocalCluster(node_env(secrets.token_hex(16), s3_env), head_cpus=0).start()
        for i in range(1, workers):
            cluster.add(f"worker{i}")
        log(f"cluster: head and {workers} worker node(s) up after {time.time() - t0:.0f} s")
        shell = {**os.environ, **s3_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"],
                 "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        shell.pop("RAY_ADDRESS", None)
        driver = subprocess.Popen(CLI + ["sweep", "run", str(spec), "--address", cluster.gcs, "--no-aggregate"],
                                  env=shell, stdout=open(root / "driver.out", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        store = Storage(f"s3://{BUCKET}/sweeps/soak")
        deadline = t0 + timeout
        spare = 0
        while len(kills_done) < kills and driver.poll() is None and time.time() < deadline:
            # a random moment while a trial trains on some worker node, then a random node of those
            busy = {}
            while not busy and driver.poll() is None and time.time() < deadline:
                time.sleep(0.5)
                busy = _busy(store, runs, {node: name for name, node in cluster.ids.items() if name != "head"})
            wait_until = time.time() + rng.uniform(1, 8)
            while time.time() < wait_until and driver.poll() is None:
                time.sleep(0.2)
            if driver.poll() is not None or not busy:
                break
            name = rng.choice(sorted(busy))
            node = cluster.ids[name]
            running = [r for r in runs if not store.done(r) and (a := store.attempts(r)) and a[-1]["node_id"] == node]
            reached = {r: store.step(r) for r in running}
            starts = {r: len(store.attempts(r)) for r in running}
            killed = time.time()
            cluster.kill(name)
            spare += 1
            cluster.add(f"spare{spare}")
            kills_done.append({"node": name, "time": killed, "trials": running, "reached": reached, "starts": starts})
            log(f"kill {len(kills_done)}: {name} at {killed - t0:.0f} s, trials {running or 'none'}")
        remaining = max(deadline - time.time(), 1)
        try:
            driver.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            log("time is up: stopping the sweep")
        result = _measure(store, runs, reference, kills_done)
        result.update(driver_exit=driver.poll(), wall_s=round(time.time() - t0, 1))
        if result["driver_exit"] != 0:
            log("the driver's last lines:\n" + (root / "driver.out").read_text()[-3000:])
        return result
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        if cluster is not None:
            cluster.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _busy(store: Storage, runs: list[str], workers: dict[str, str]) -> dict[str, list[str]]:
    """worker name -> the unfinished runs whose latest start was on it (node id -> name in `workers`)."""
    out: dict[str, list[str]] = {}
    for run in runs:
        a = store.attempts(run)
        if a and a[-1]["node_id"] in workers and not store.done(run):
            out.setdefault(workers[a[-1]["node_id"]], []).append(run)
    return out


def _measure(store: Storage, runs: list[str], reference: dict, kills: list[dict]) -> dict:
    recovery, redone, survived = [], 0, 0
    for k in kills:
        ok = True
        for run in k["trials"]:
            later = store.attempts(run)[k["starts"][run]:]
            if not later or not store.done(run):
                ok = False
                continue
            recovery.append(later[0]["time"] - k["time"])
            redone += max(k["reached"][run] - later[0].get("start_step", 0), 0)
        survived += ok
    completed, diffs = [], []
    for run in runs:
        row = store.result(run) if store.done(run) else {}
        if row.get("status") == "completed":
            completed.append(run)
            diffs.append(abs(row["eval_loss"] - reference[run]))
    return {"faults_injected": len(kills), "faults_survived": survived, "trials": len(runs),
            "trials_completed": len(completed), "trials_lost": len(runs) - len(completed),
            "max_abs_eval_loss_diff": max(diffs) if diffs else None,
            "recovery_s_median": round(statistics.median(recovery), 1) if recovery else None,
            "recovery_s_worst": round(max(recovery), 1) if recovery else None,
            "trials_interrupted": len(recovery), "steps_redone": redone}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="worker nodes (1 CPU each) besides the head")
    p.add_argument("--steps", type=int, default=60, help="training steps per trial")
    p.add_argument("--seed", type=int, default=0, help="the killer's random choices")
    p.add_argument("--timeout", type=float, default=1800, help="seconds for the whole soak")
    a = p.parse_args(argv)
    result = soak(a.trials, a.kills, a.workers, a.steps, a.seed, a.timeout, lambda m: print(f"[chaos] {m}", flush=True))
    result["machine"] = machine()
    print(json.dumps(result))
    ok = result["faults_survived"] == result["faults_injected"] and result["trials_lost"] == 0
    return 0 if ok and result["max_abs_eval_loss_diff"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
