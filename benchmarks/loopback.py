"""A real multi-node Ray cluster and an S3 server on one machine's loopback, for tests and the chaos
soak: nodes are `ray start --block` processes (token authentication on, every HTTP server on
127.0.0.1), each killable on its own by the ids of the processes it started, as a lost machine.

Loopback note: Ray 2.60's `ray start` rewrites --node-ip-address=127.0.0.1 (and localhost) to the
machine's outward address, so the nodes use 127.0.0.2, which is loopback and kept as given. Ray's
own gRPC servers (GCS, raylets, workers) listen on all interfaces whatever the node address; Ray
has no option to change that, so token authentication is what guards them here.

Health checks: the head's GCS asks every node each HEALTH_CHECK["health_check_period_ms"] and
marks it dead after health_check_failure_threshold failures in a row, so a killed node (its port
refuses at once) is noticed within about 5 s here (Ray's defaults, 3 s x 5: about 15 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

NODE_IP = "127.0.0.2"
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


def process_tree(roots: list[int]) -> dict[int, str]:
    """The processes under `roots` (included), with their start times to recognise them later."""
    table, out, todo = processes(), {}, list(roots)
    while todo:
        pid = todo.pop()
        if pid in table:
            out[pid] = table[pid][1]
            todo.extend(p for p, (parent, _) in table.items() if parent == pid)
    return out


def kill_tree(tree: dict[int, str]) -> None:
    """SIGKILL the processes of a process_tree() that are still those processes (not a reused pid)."""
    now = processes()
    for pid, started in tree.items():
        if now.get(pid, (0, None))[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class LocalCluster:
    """A head and worker nodes on loopback, each `ray start --block` (1 CPU by default), token auth on.

    `start()` brings up the head and one worker ("worker"); `add(name)` another worker; `kill(name)`
    SIGKILLs every process of that node at once; `stop()` ends all, by the ids of the processes
    this object started: SIGTERM to the `ray start` processes (which stop their nodes), then SIGKILL
    to whatever of their process trees is left. Node ids (Ray's) are in `ids` by name.
    """

    def __init__(self, env: dict, head_cpus: int = 1):
        self.dir = Path(tempfile.mkdtemp(prefix="lr", dir="/tmp"))  # short: Ray's socket paths live under it
        self.env, self.head_cpus = env, head_cpus
        self.port, self.dash = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dash}"
        self.gcs = f"{NODE_IP}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.args: dict[str, list[str]] = {}
        self.ids: dict[str, str] = {}

    def argv(self, name: str) -> list[str]:
        """The `ray start` arguments of the node `name` (the head, or a worker): cluster/README.md's
        one-machine commands plus --block and ports of its own (a test checks the README against these)."""
        if name == "head":
            own = ["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
                   f"--ray-client-server-port={free_port()}", f"--system-config={json.dumps(HEALTH_CHECK)}"]
        else:
            own = [f"--address={self.gcs}"]
        # One temp dir per node: nodes sharing one would share (and delete) unpacked runtime environments.
        cpus = self.head_cpus if name == "head" else 1
        return own + ["--block", f"--node-ip-address={NODE_IP}", f"--num-cpus={cpus}", f"--temp-dir={self.dir / name}",
                      "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                      f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
                      f"--runtime-env-agent-port={free_port()}"]

    def _start(self, name: str) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        self.args[name] = self.argv(name)
        with open(self.dir / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen([ray, "start", *self.args[name]], env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, what: str, ok, timeout: float = 120) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if any(p.poll() is not None for n, p in self.procs.items() if n in self.ids or n == what):
                break
            try:
                if ok():
                    return
            except OSError:
                pass
            time.sleep(1)
        logs = "\n".join((self.dir / f"{n}.log").read_text()[-1500:] for n in self.procs
                         if (self.dir / f"{n}.log").exists())
        raise AssertionError(f"{what} did not come up\n{logs}")

    def get(self, path: str):
        req = urllib.request.Request(self.address + path,
                                     headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict]:
        return [n for n in self.get("/api/v0/nodes")["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def _join(self, name: str) -> str:
        """Start node `name`, wait until it is alive; its node id."""
        before = {n["node_id"] for n in self.nodes()} if self.ids else set()
        self._start(name)
        new: list[str] = []

        def joined() -> bool:
            new[:] = [n["node_id"] for n in self.nodes() if n["node_id"] not in before]
            return len(new) == 1

        self._wait(name, joined)
        self.ids[name] = new[0]
        return new[0]

    def start(self) -> "LocalCluster":
        self._join("head")
        self._join("worker")
        self.started = time.time()
        return self

    def add(self, name: str) -> str:
        """Another worker node (its own temp dir); its node id once it is alive."""
        return self._join(name)

    def kill(self, name: str) -> None:
        """Every process of node `name` at once (SIGKILL, by pid), as when its machine is lost."""
        kill_tree(process_tree([self.procs[name].pid]))
        self.procs[name].wait(timeout=30)
        self.ids.pop(name, None)

    def alive(self, name: str) -> bool:
        return name in self.ids and self.procs[name].poll() is None

    def stop(self) -> None:
        tree = process_tree([p.pid for p in self.procs.values()])
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        kill_tree(tree)  # whatever is left
        shutil.rmtree(self.dir, ignore_errors=True)


def s3_server():
    """An S3-compatible server (moto, over HTTP on 127.0.0.1) with one bucket per caller's choice:
    (server, AWS_* variables that reach it). Stop it with server.stop()."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    return server, env


def s3_filesystem(env: dict):
    """A pyarrow filesystem on the server of s3_server() (buckets may be created through it)."""
    import pyarrow.fs as pafs

    host = env["AWS_ENDPOINT_URL"].split("://", 1)[1]
    return pafs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                             region=env["AWS_DEFAULT_REGION"], scheme="http", endpoint_override=host,
                             allow_bucket_creation=True)


def node_env(token: str, extra: dict | None = None) -> dict:
    """The environment the nodes start with: this one without AWS_*/RAY_* settings (no S3 access of
    its own unless `extra` gives it), this Python first on PATH (a job's `python`), token auth on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **(extra or {}))
    return env
