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
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_tree
from tests.test_s3_storage import BUCKET, moto_s3  # noqa: F401 - the S3 server fixture

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "orchestrator.cli"]
NODE_IP = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_on(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp) of the sockets listening on a TCP port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(local.rsplit(":", 1)[0])
    return found


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


def _tree(roots: list[int]) -> dict[int, str]:
    """The processes under `roots` (included), with their start times to recognise them later."""
    table, out, todo = _processes(), {}, list(roots)
    while todo:
        pid = todo.pop()
        if pid in table:
            out[pid] = table[pid][1]
            todo.extend(p for p, (parent, _) in table.items() if parent == pid)
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
        with open(self.dir / f"{name}.log", "w") as log:
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
        tree = _tree([p.pid for p in self.procs])
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        now = _processes()
        for pid, started in tree.items():  # whatever is left (same pid *and* start time: not a reused pid)
            if now.get(pid, (0, None))[1] == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


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


def test_submit_follow_runs_on_both_nodes_into_s3(cluster, moto_s3, tmp_path):
    import pyarrow.parquet as pq

    s3_env, fs = moto_s3
    nodes = cluster.nodes()
    assert all(ipaddress.ip_address(n["node_ip"]).is_loopback for n in nodes), nodes
    assert listening_on(cluster.dash) == {"0100007F"}  # the dashboard / Jobs API on 127.0.0.1 only
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
    no_token = subprocess.run(CLI + ["jobs", "list", "--address", cluster.address], capture_output=True, text=True,
                              env={**env, "RAY_AUTH_TOKEN": "not-the-token"}, timeout=60)
    assert no_token.returncode == 2 and "Invalid authentication token" in no_token.stderr, no_token.stderr
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
MANIFESTS = sorted(p for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".sbatch") or p.name == "Dockerfile")
SUBCOMMANDS = "train|sweep|aggregate|submit|jobs"


def ray_pin() -> str:
    """The project's Ray version; every Ray pin in pyproject.toml (main and extras) must agree."""
    pins = set(re.findall(r'"ray\[[\w,]+\]==([\w.]+)"', (REPO / "pyproject.toml").read_text()))
    assert len(pins) == 1, f"pyproject.toml pins several Ray versions: {pins}"
    return pins.pop()


def localist_commands(text: str) -> list[list[str]]:
    """Every `localist <subcommand> ...` command line in a file, comments included (documented
    usage is checked too): shell continuations joined, shell quoting honoured, a command starts a
    line or follows && ; | ( - or NAME=VALUE prefixes, and ends at the next shell operator."""
    cmds = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        lexer = shlex.shlex(line.lstrip("# \t"), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words end at blanks and shell operators only
        try:
            tokens = list(lexer)
        except ValueError:  # prose with an unbalanced quote
            continue
        for i, tok in enumerate(tokens[:-1]):
            before = tokens[:i]
            starts = not before or before[-1] in ("-", "(") or re.fullmatch(r"[;&|()]+|\S+:", before[-1]) \
                or all(re.fullmatch(r"\w+=\S*", t) for t in before)
            if tok == "localist" and starts and re.fullmatch(SUBCOMMANDS, tokens[i + 1]):
                end = next((j for j in range(i + 1, len(tokens)) if re.fullmatch(r"[;&|()<>]+", tokens[j])), None)
                cmds.append(tokens[i + 1:end])
    return cmds


def test_every_way_of_getting_a_cluster_is_there():
    assert {"ray-up-aws.yaml", "kuberay-rayjob.yaml", "slurm.sbatch", "Dockerfile"} <= {p.name for p in MANIFESTS}
    assert (CLUSTER / "README.md").exists()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_names_a_sweep_and_real_commands_and_the_pinned_ray(path):
    from orchestrator.cli import parser

    text = path.read_text()
    if path.suffix == ".yaml":
        assert [d for d in yaml.safe_load_all(text) if d]
    elif path.suffix == ".sbatch":
        assert text.startswith("#!/bin/bash") and "#SBATCH --nodes" in text
        bash = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert bash.returncode == 0, bash.stderr
    else:
        assert re.search(r"^FROM \S+", text, re.M)
    sweeps = []
    for argv in localist_commands(text):
        args = parser().parse_args(argv)  # SystemExit (a test failure) unless it is a real command line
        if getattr(args, "file", None):
            assert (REPO / args.file).is_file() and args.file.startswith("sweeps/"), f"{path.name}: {argv}"
            sweeps.append(args.file)
    assert sweeps, f"{path.name}: runs no sweep file"
    versions = re.findall(r"ray(?:\[[\w,]+\])?==([\w.]+)", text) + re.findall(r"rayproject/ray:([\d.]+)", text)
    versions += re.findall(r"rayVersion:\s*['\"]?([\d.]+)", text)
    assert versions or path.suffix == ".sbatch", f"{path.name}: names no Ray version"  # SLURM: the checkout's .venv
    assert set(versions) <= {ray_pin()}, f"{path.name}: Ray {set(versions)} but the project pins {ray_pin()}"


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name != "Dockerfile"], ids=lambda p: p.name)
def test_manifest_keeps_ray_private(path):
    """Token authentication on, no dashboard on all interfaces, nothing that looks like a secret."""
    text = path.read_text()
    assert re.search(r"RAY_AUTH_MODE=token|authOptions:\s*\n\s*mode: token", text)
    assert "RAY_AUTH_MODE=disabled" not in text
    assert not re.search(r"dashboard-host[= ]0\.0\.0\.0", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}|(?i:secret_access_key|auth_token)\s*[=:]\s*[\w/+]{16,}|\b\d{12}\b", text)


def test_ray_up_config_is_a_valid_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / "ray-up-aws.yaml").read_text())
    validate_config(prepare_config(cfg))  # what `ray up` checks before it launches anything
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert cfg["provider"]["type"] == "aws" and cfg["idle_timeout_minutes"] > 0
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= cfg["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance type
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    assert any("localist[cluster]" in c for c in cfg["setup_commands"])


def test_kuberay_rayjob_runs_the_paper_sweep_and_cleans_up():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True and "sweeps/paper.yaml" in spec["entrypoint"]
    assert re.search(r"--storage s3://", spec["entrypoint"])
    assert cluster["rayVersion"] == ray_pin() and cluster["authOptions"] == {"mode": "token"}
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]]
    for group in cluster["workerGroupSpecs"]:
        c = group["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
        containers.append(c)
    for c in containers:  # S3 credentials only by reference to a Secret
        assert c["envFrom"] == [{"secretRef": {"name": "localist-s3", "optional": True}}]
        assert not any(e.get("value") for e in c.get("env", []) if e["name"].startswith("AWS_"))
