"""Sweeps on S3: the storage layer against a real S3-compatible server (moto over HTTP on
127.0.0.1, not a mock object), and what `localist submit` decides before it contacts a cluster.

Both ways of reaching an S3-compatible store work: a plain s3://bucket/prefix with the endpoint
in AWS_ENDPOINT_URL (what pyarrow and every AWS tool read), or pyarrow's URI query
(?endpoint_override=HOST:PORT&scheme=http), which path joins must keep at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from localist import io
from localist.config import ConfigError

BUCKET = "localist-test"


@pytest.fixture(scope="module")
def moto_s3():
    """(AWS_* variables that reach the server, a pyarrow filesystem on it); one bucket, BUCKET."""
    from benchmarks.loopback import s3_filesystem, s3_server

    server, env = s3_server()
    fs = s3_filesystem(env)
    fs.create_dir(BUCKET)
    yield env, fs
    server.stop()


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    env, fs = moto_s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env, fs


def test_io_round_trip_on_s3(s3_env, tmp_path):
    _, fs = s3_env
    root = f"s3://{BUCKET}/io"
    table = pa.table({"a": [1, 2, 3]})
    io.write_parquet(table, io.join(root, "t", "x.parquet"))
    io.write_text(io.join(root, "t", "note.txt"), "hello")
    assert io.read_parquet(io.join(root, "t", "x.parquet")).equals(table)
    assert io.read_text(io.join(root, "t", "note.txt")) == "hello"
    assert io.listdir(io.join(root, "t")) == ["note.txt", "x.parquet"]
    assert fs.get_file_info(f"{BUCKET}/io/t/x.parquet").size > 0  # really on the server
    io.delete(io.join(root, "t"))
    assert not io.exists(io.join(root, "t")) and io.listdir(io.join(root, "t")) == []


def test_endpoint_in_the_uri_query(moto_s3, monkeypatch):
    env, fs = moto_s3
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    host = env["AWS_ENDPOINT_URL"].removeprefix("http://")
    root = f"s3://{BUCKET}/q?endpoint_override={host}&scheme=http"
    f = io.join(root, "quick", "sweep.yaml")
    assert f == f"s3://{BUCKET}/q/quick/sweep.yaml?endpoint_override={host}&scheme=http"
    io.write_text(f, "name: quick\n")
    assert fs.get_file_info(f"{BUCKET}/q/quick/sweep.yaml").size == len("name: quick\n")
    assert io.parent(io.join(root, "quick")) == root


def test_sweep_lock_on_s3_refuses_a_second_driver(s3_env):
    from orchestrator.sweep.lock import SweepLock, SweepLocked

    with SweepLock(f"s3://{BUCKET}/locks/quick"):
        with pytest.raises(SweepLocked, match="already being run"):
            SweepLock(f"s3://{BUCKET}/locks/quick").acquire()
    SweepLock(f"s3://{BUCKET}/locks/quick").acquire().release()  # released: free again


# --- what `localist submit` decides before contacting a cluster ----------------------------

def tiny_sweep(folder: Path, storage: str, seeds: tuple[int, ...] = (1,)) -> Path:
    import yaml

    from tests.conftest import TINY

    spec = {"name": "quick", "storage": storage, "base": TINY,
            "grid": {"configuration": {"peak-0": {"locality": {"peak": 0.0}}}, "seeds": list(seeds)}}
    (folder / "sweeps").mkdir(exist_ok=True)
    path = folder / "sweeps" / "quick.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_entrypoint_runs_new_and_resumes_stored_sweeps(s3_env, tmp_path, monkeypatch):
    from orchestrator import layout, submit
    from orchestrator.spec import expand

    monkeypatch.chdir(tmp_path)
    tiny_sweep(tmp_path, f"s3://{BUCKET}/entry")
    cmd, sp = submit.entrypoint("sweeps/quick.yaml", None, tmp_path)
    assert cmd == ["python", "-m", "orchestrator.cli", "sweep", "run", "sweeps/quick.yaml", "--address", "auto"]
    cmd, _ = submit.entrypoint("sweeps/quick.yaml", f"s3://{BUCKET}/other", tmp_path)
    assert cmd[-2:] == ["--storage", f"s3://{BUCKET}/other"]

    expand(sp)  # as the driver does before saving the spec
    io.write_text(layout.spec_file(sp.uri), layout.spec_text(sp))
    cmd, _ = submit.entrypoint("sweeps/quick.yaml", None, tmp_path)
    assert cmd[4:] == ["resume", f"s3://{BUCKET}/entry/quick", "--address", "auto"]

    tiny_sweep(tmp_path, f"s3://{BUCKET}/entry", seeds=(2,))
    with pytest.raises(ConfigError, match="a different sweep named 'quick'"):
        submit.entrypoint("sweeps/quick.yaml", None, tmp_path)


def test_entrypoint_refuses_what_a_cluster_cannot_use(tmp_path):
    from orchestrator import submit

    tiny_sweep(tmp_path, "./results")
    with pytest.raises(ConfigError, match="relative to the job's temporary folder"):
        submit.entrypoint(str(tmp_path / "sweeps" / "quick.yaml"), None, tmp_path)
    with pytest.raises(ConfigError, match="must be inside the working directory"):
        submit.entrypoint(str(tmp_path / "sweeps" / "quick.yaml"), str(tmp_path / "store"), tmp_path / "sweeps" / "x")


def test_runtime_env_ships_code_and_only_s3_settings(tmp_path, monkeypatch):
    from orchestrator import submit

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_PROFILE", "local-only")
    monkeypatch.setenv("HF_TOKEN", "hf")
    renv = submit.runtime_env(tmp_path, extra_env=["HF_TOKEN", "LOCALIST_CACHE=/data/cache"])
    assert renv["env_vars"]["AWS_ACCESS_KEY_ID"] == "id" and "AWS_PROFILE" not in renv["env_vars"]
    assert renv["env_vars"]["HF_TOKEN"] == "hf" and renv["env_vars"]["LOCALIST_CACHE"] == "/data/cache"
    assert [Path(p).name for p in renv["py_modules"]] == ["localist", "orchestrator"]
    assert ".venv/" in renv["excludes"] and renv["working_dir"] == str(tmp_path)
    assert "AWS_ACCESS_KEY_ID" not in submit.runtime_env(tmp_path, forward_aws=False)["env_vars"]
    assert "py_modules" not in submit.runtime_env(submit.CODE_ROOT)  # the checkout itself is the working dir
    with pytest.raises(ConfigError, match="--env NOT_SET_ANYWHERE"):
        submit.runtime_env(tmp_path, extra_env=["NOT_SET_ANYWHERE"])


def test_submit_to_an_unreachable_cluster_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    tiny_sweep(tmp_path, str(tmp_path / "store"))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", "sweeps/quick.yaml", "--address",
                           f"http://127.0.0.1:{port}"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--address http://127.0.0.1:{port}: cannot reach the Ray Jobs API" in proc.stderr
