"""Cluster submission on a real two-node Ray, and the cluster/ manifests.

The multi-node test starts a head and a worker node as separate `ray start --block` processes
(1 CPU each, so a sweep running two trials at once must use both), with Ray token authentication
on and every HTTP server bound to loopback, plus an S3-compatible server (moto, over HTTP on
127.0.0.1). It submits a shrunken quick sweep with `localist submit --follow` and checks that
trials ran on both nodes and that results and report landed in S3. The S3 credentials reach the
trials only through the job's runtime environment: the cluster is started without them.

Loopback note: Ray 2.60's `ray start` rewrites --node-ip-address=127.0.0.1 (and localhost) to the
machine's outward address, so the nodes use 127.0.0.2, which is loopback and kept as given. Ray's
own gRPC servers (GCS, raylets, workers) listen on all interfaces whatever the node address; Ray
has no option to change that, so token authentication is what guards them here.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_tree

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "orchestrator.cli"]
NODE_IP = "127.0.0.2"
BUCKET = "localist-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return kids


def _descendants(pids: list[int]) -> list[int]:
    kids, out, todo = _children(), [], list(pids)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


class LocalCluster:
    """A head and one worker node on loopback, each `ray start --block` (1 CPU), token auth on.

    Stopped by the ids of the processes this object started: SIGTERM to the two `ray start`
    processes (which stop their nodes), then SIGKILL to whatever of their process trees is left.
    """

    def __init__(self, env: dict):
        self.dir = Path(tempfile.mkdtemp(prefix="lr", dir="/tmp"))  # short: Ray's socket paths live under it
        self.env = env
        self.port, self.dash = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dash}"
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        # One temp dir per node: nodes sharing one would share (and delete) unpacked runtime environments.
        common = ["--block", f"--node-ip-address={NODE_IP}", "--num-cpus=1", f"--temp-dir={self.dir / name[0]}",
                  "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                  f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
                  f"--runtime-env-agent-port={free_port()}"]
        log = open(self.dir / f"{name}.log", "w")
        self.procs.append(subprocess.Popen([ray, "start", *args, *common], env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, what: str, ok, timeout: float = 90) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                if ok():
                    return
            except OSError:
                pass
            time.sleep(1)
        logs = "\n".join((self.dir / f"{n}.log").read_text()[-1500:] for n in ("head", "worker")
                         if (self.dir / f"{n}.log").exists())
        raise AssertionError(f"{what} did not come up\n{logs}")

    def get(self, path: str):
        req = urllib.request.Request(self.address + path,
                                     headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict]:
        return [n for n in self.get("/api/v0/nodes")["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def start(self) -> "LocalCluster":
        self._start("head", ["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={self.dash}", f"--ray-client-server-port={free_port()}"])
        self._wait("the head node", lambda: len(self.nodes()) == 1)
        self._start("worker", [f"--address={NODE_IP}:{self.port}"])
        self._wait("the worker node", lambda: len(self.nodes()) == 2)
        self.started = time.time()
        return self

    def stop(self) -> None:
        tree = _descendants([p.pid for p in self.procs])
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server (moto) over HTTP on loopback, with one bucket."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                           endpoint_override=f"{host}:{port}", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    yield env, fs
    server.stop()


@pytest.fixture(scope="module")
def cluster():
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}  # no S3 access of its own
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the job's `python`
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    c, t0 = LocalCluster(env), time.time()
    try:
        yield c.start()
    finally:
        t1 = time.time()
        c.stop()
        print(f"\ncluster: started in {c.started - t0:.1f}s, stopped in {time.time() - t1:.1f}s")


def client_env(cluster, s3_env) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **s3_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"],
            "PYTHONPATH": str(REPO)}


def shrunken_quick(folder: Path, steps: int = 480) -> Path:
    """sweeps/quick.yaml with the tiny test model and 2 peaks x 2 schedules x 1 seed + its comparator.

    Trials last several seconds: Tune reuses a finished trial's actor, so with very short trials
    the first actor can run them all before the second node's actor has imported torch.
    """
    spec = yaml.safe_load((REPO / "sweeps" / "quick.yaml").read_text())
    spec["base"] = tiny_tree(train={"steps": steps, "eval_every": steps // 2, "log_every": steps // 2})
    spec["grid"]["configuration"] = {k: spec["grid"]["configuration"][k] for k in ("peak-0", "peak-1")}
    spec["grid"]["seeds"] = [1]
    spec.update(storage=f"s3://{BUCKET}/sweeps", checkpoint_every=steps // 2, retries=1)
    path = folder / "quick.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_submit_follow_runs_on_both_nodes_into_s3(cluster, s3, tmp_path):
    import pyarrow.parquet as pq

    s3_env, fs = s3
    nodes = cluster.nodes()
    assert all(ipaddress.ip_address(n["node_ip"]).is_loopback for n in nodes), nodes
    shrunken_quick(tmp_path)
    env = client_env(cluster, s3_env)
    t0 = time.time()
    proc = subprocess.run(CLI + ["submit", "quick.yaml", "--address", cluster.address, "--follow"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    job = re.search(r"^job: (\S+)", proc.stdout, re.M).group(1)
    assert "sweep run quick.yaml --address auto" in out
    print(f"\nsubmit --follow: {time.time() - t0:.1f}s")

    trials = pq.read_table(f"{BUCKET}/sweeps/quick/results/trials.parquet", filesystem=fs).to_pandas()
    assert len(trials) == 5 and set(trials.status) == {"completed"}
    assert set(trials.node_id) == {n["node_id"] for n in nodes}  # both nodes ran trials
    assert fs.get_file_info(f"{BUCKET}/sweeps/quick/summary/report.html").size > 0
    assert fs.get_file_info(f"{BUCKET}/sweeps/quick/tune").type.name == "Directory"

    def cli(*args):
        r = subprocess.run(CLI + ["jobs", *args, "--address", cluster.address], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    assert re.search(rf"{job}\s+SUCCEEDED .* quick", cli("list"))
    status = cli("status", job)
    assert "status: SUCCEEDED" in status and "driver exit code: 0" in status
    assert "[sweep] report: s3://" in cli("logs", job)

    # The storage now holds the sweep: a second submission resumes it; stop that job.
    again = subprocess.run(CLI + ["submit", "quick.yaml", "--address", cluster.address], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"sweep resume s3://{BUCKET}/sweeps/quick --address auto" in again.stdout
    job2 = re.search(r"^job: (\S+)", again.stdout, re.M).group(1)
    assert "stop requested" in cli("stop", job2)
    end = time.time() + 30
    while "status: STOPPED" not in cli("status", job2):
        assert time.time() < end, cli("status", job2)
        time.sleep(1)


# --- the cluster/ manifests -------------------------------------------------------------------

CLUSTER = REPO / "cluster"
MANIFESTS = sorted(p for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".sbatch"))


def ray_pin() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.search(r"==([\w.]+)", d).group(1) for d in deps if d.startswith("ray["))


def localist_commands(text: str) -> list[list[str]]:
    """Every `localist ...` command line in a manifest (shell continuations joined, comments ignored)."""
    text = re.sub(r"\\\n\s*", " ", text)
    cmds = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("#"):
            continue
        for m in re.finditer(r"(?:^|[\s;&|('\"])localist ([^;&|'\")\n]+)", line):
            cmds.append(shlex.split(m.group(1)))
    return cmds


def test_every_manifest_is_there():
    names = {p.name for p in MANIFESTS}
    assert {"ray-up-aws.yaml", "kuberay-rayjob.yaml", "slurm.sbatch"} <= names
    assert (CLUSTER / "README.md").exists()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_and_names_real_things(path):
    from orchestrator.cli import parser

    text = path.read_text()
    if path.suffix == ".yaml":
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert docs
    else:
        assert text.startswith("#!/bin/bash") and "#SBATCH" in text
        bash = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert bash.returncode == 0, bash.stderr
    cmds = localist_commands(text)
    assert cmds, f"{path.name}: no localist command"
    for argv in cmds:
        args = parser().parse_args(argv)  # SystemExit (a failure) when not a real command line
        if getattr(args, "file", None):
            assert (REPO / args.file).is_file(), f"{path.name}: {args.file} does not exist"
            assert args.file.startswith("sweeps/")
    pin = ray_pin()
    versions = re.findall(r"ray(?:\[[\w,]+\])?==([\w.]+)", text) + re.findall(r"rayproject/ray:([\d.]+)", text)
    versions += re.findall(r"rayVersion:\s*['\"]?([\d.]+)", text)
    assert versions, f"{path.name}: names no Ray version"
    assert set(versions) == {pin}, f"{path.name}: Ray {set(versions)} but the project pins {pin}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_keeps_ray_private(path):
    """Token auth on, dashboard on loopback, and nothing that looks like a credential or account."""
    text = path.read_text()
    assert "RAY_AUTH_MODE" in text and re.search(r"RAY_AUTH_MODE[=:]\s*['\"]?token", text)
    assert not re.search(r"dashboard-host[= ]0\.0\.0\.0", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[=:]\s*\S{20,}|\b\d{12}\b", text)
