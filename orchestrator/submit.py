"""`localist submit` and `localist jobs`: a sweep as a Ray Job on a running cluster.

Why a Ray Job rather than `sweep run --address ray://...`: the driver then lives on the cluster,
so a laptop can submit, close its lid and come back for the report; the Jobs API (dashboard
port, 8265) is also the one address every way of getting a cluster exposes (`ray up`, KubeRay,
SLURM). The job ships the current directory (`working_dir`, which must hold the sweep file) and
the exact `localist`/`orchestrator` code this command runs (`py_modules`, unless the directory
already holds it), and runs `python -m orchestrator.cli sweep run|resume ... --address auto`
with the cluster's own Python, which must have the project's dependencies installed.

Storage must be reachable from every node: `s3://`, `gs://` or an absolute path on a shared
filesystem. S3 settings and credentials come from the usual `AWS_*` variables; the ones named in
FORWARDED_ENV are copied from this shell into the job (values never printed or written to disk;
note that Ray shows a job's runtime environment to anyone who can reach its dashboard). Ray
token authentication needs nothing here: the SDK sends `RAY_AUTH_TOKEN` (or ~/.ray/auth_token)
when `RAY_AUTH_MODE=token` is set.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import uuid
from pathlib import Path

from localist import io
from localist.config import ConfigError
from orchestrator import layout
from orchestrator.spec import SweepSpec

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the head's Jobs API, reached through an SSH tunnel / port-forward
FORWARDED_ENV = io.S3_ENV  # S3 credentials, region and endpoint override
# Never uploaded with the working directory (Ray also honours .gitignore files); the upload limit is 100 MiB.
EXCLUDES = [".git/", ".venv/", "venv/", "results/", "runs/", ".ci-cache/", ".pytest_cache/", ".hypothesis/",
            "__pycache__/", "*.egg-info/", "build/", "dist/"]
CODE_ROOT = Path(__file__).resolve().parent.parent  # holds the localist/ and orchestrator/ packages


def client(address: str | None):
    """A JobSubmissionClient for `address` (else $RAY_API_SERVER_ADDRESS, else the loopback default).

    The SDK lets RAY_ADDRESS/RAY_API_SERVER_ADDRESS override an explicit address; here an explicit
    --address wins, and RAY_ADDRESS (usually a GCS address meant for ray.init) is not consulted.
    """
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("the Ray Jobs SDK needs ray[default]: pip install 'localist[cluster]'") from None
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        os.environ.pop(var, None)
    from ray.exceptions import AuthenticationError

    try:
        return JobSubmissionClient(address)
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: cannot reach the Ray Jobs API ({e}); is the cluster up and "
                          "the dashboard port forwarded (e.g. `ray dashboard cluster/ray-up-aws.yaml`)?") from None
    except AuthenticationError as e:  # token auth on, and no token or the wrong one here
        raise ConfigError(f"--address {address}: {e}") from None


def _relative_sweep(file: str, working_dir: Path) -> str:
    path = Path(file).resolve()
    if not path.is_relative_to(working_dir):
        raise ConfigError(f"{file}: the sweep file must be inside the working directory {working_dir} "
                          "(it is shipped with the job); run from its folder or pass --working-dir")
    return path.relative_to(working_dir).as_posix()


def _check_shared(storage: str, source: str) -> None:
    if io.is_local(storage) and not os.path.isabs(os.path.expanduser(storage.removeprefix("file://"))):
        raise ConfigError(f"{source}: storage: {storage!r} is relative to the job's temporary folder on the head "
                          "node; pass --storage s3://bucket/prefix (or gs://..., or an absolute path on a filesystem "
                          "every node mounts)")


def entrypoint(file: str, storage: str | None, working_dir: Path) -> tuple[list[str], SweepSpec]:
    """The job's command: `sweep run`, or `sweep resume` when the storage already holds this sweep.

    Validates the sweep here first, so a typo fails before anything is uploaded.
    """
    from orchestrator import spec as sweep_spec

    sp = sweep_spec.load(file, {"storage": storage} if storage else None)
    # every trial's config must validate and its corpus exist too (as `sweep run` checks before Ray)
    sweep_spec.check_files(sweep_spec.expand(sp, file), file)
    _check_shared(sp.storage, file)
    base = ["python", "-m", "orchestrator.cli", "sweep"]
    saved = layout.spec_file(sp.uri)
    if io.exists(saved):
        if not layout.same_sweep(io.read_text(saved), sp):
            raise ConfigError(f"{file}: name: a different sweep named {sp.name!r} already exists at {sp.uri}; "
                              "choose a new name or storage")
        return base + ["resume", sp.uri, "--address", "auto"], sp
    cmd = base + ["run", _relative_sweep(file, working_dir), "--address", "auto"]
    return cmd + (["--storage", storage] if storage else []), sp


def runtime_env(working_dir: Path, forward_aws: bool = True, extra_env: list[str] = ()) -> dict:
    env = {k: os.environ[k] for k in FORWARDED_ENV if forward_aws and os.environ.get(k)}
    for item in extra_env:
        name, eq, value = item.partition("=")
        if not eq and name not in os.environ:
            raise ConfigError(f"--env {name}: not set in this environment")
        env[name] = value if eq else os.environ[name]
    renv = {"working_dir": str(working_dir), "excludes": EXCLUDES, "env_vars": env}
    if not CODE_ROOT.is_relative_to(working_dir):
        renv["py_modules"] = [str(CODE_ROOT / "localist"), str(CODE_ROOT / "orchestrator")]
    return renv


def submit(file: str, address: str | None = None, storage: str | None = None, follow: bool = False,
           working_dir: str = ".", forward_aws: bool = True, extra_env: list[str] = (), log=print) -> int:
    wd = Path(working_dir).resolve()
    cmd, sp = entrypoint(file, storage, wd)
    renv = runtime_env(wd, forward_aws, extra_env)
    c = client(address)
    job_id = f"localist-{sp.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    job_id = c.submit_job(entrypoint=shlex.join(cmd), submission_id=job_id, runtime_env=renv,
                          metadata={"sweep": sp.name, "storage": sp.uri})
    log(f"job: {job_id}")
    log(f"  runs: {shlex.join(cmd)}")
    log(f"  results: {sp.uri}")
    if renv["env_vars"]:
        log(f"  forwarded: {', '.join(sorted(renv['env_vars']))}")
    if not follow:
        log(f"  follow it with `localist jobs logs {job_id} --follow`")
        return 0
    return follow_job(c, job_id, log)


def follow_job(c, job_id: str, log=print) -> int:
    """Stream a job's logs until it ends; its exit status (driver exit code, 1 if unknown)."""
    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        log(f"\n(stopped following; the job keeps running: `localist jobs stop {job_id}` ends it)")
        return 130
    info = c.get_job_info(job_id)
    while not info.status.is_terminal():  # the log stream can close just before the status is final
        time.sleep(0.5)
        info = c.get_job_info(job_id)
    log(f"job {job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    if info.status == "SUCCEEDED":
        return 0
    return info.driver_exit_code or 1


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1000)) if ts else "-"


def jobs(action: str, job_id: str | None = None, address: str | None = None, follow: bool = False,
         log=print) -> int:
    """list | status ID | logs ID [--follow] | stop ID. The runtime environment is never printed."""
    c = client(address)
    try:
        if action == "list":
            rows = sorted(c.list_jobs(), key=lambda j: j.start_time or 0)
            log(f"{'job':<40} {'status':<10} {'started':<19}  sweep / entrypoint")
            for j in rows:
                what = (j.metadata or {}).get("sweep") or j.entrypoint[:60]
                log(f"{j.submission_id or j.job_id:<40} {j.status!s:<10} {_when(j.start_time):<19}  {what}")
            return 0
        if action == "status":
            j = c.get_job_info(job_id)
            log(f"job: {job_id}\nstatus: {j.status}\nmessage: {j.message or '-'}\nentrypoint: {j.entrypoint}")
            log(f"started: {_when(j.start_time)}\nended: {_when(j.end_time)}\ndriver exit code: "
                f"{'-' if j.driver_exit_code is None else j.driver_exit_code}")
            if j.metadata and j.metadata.get("storage"):
                log(f"results: {j.metadata['storage']}")
            return 0
        if action == "logs":
            if follow:
                return follow_job(c, job_id, log)
            sys.stdout.write(c.get_job_logs(job_id))
            return 0
        if action == "stop":
            stopped = c.stop_job(job_id)
            log(f"job {job_id}: " + ("stop requested" if stopped else f"not running ({c.get_job_status(job_id)})"))
            return 0
    except RuntimeError as e:  # the SDK's error for unknown jobs and refused requests
        raise ConfigError(f"jobs {action} {job_id or ''}: {e}".replace("  ", " ")) from None
    raise ValueError(action)
