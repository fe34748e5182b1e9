"""Starting Ray for a sweep: a private local Ray on loopback, or an existing cluster attached to
within a minute, and what that cluster can run, asked before any trial starts.

Ray's own `ray.init(address=...)` retries an address that does not answer forever, and Tune
keeps a trial whose resources no node has "pending" forever; both look like a slow start to a
user. Here both become an exit-2 error within a minute that names the address or the resource.
So does object storage that the cluster's nodes cannot write (their environment lacks the
credentials this shell has): every trial would fail on its first write otherwise.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time

from localist import faults
from localist.config import ConfigError

CONNECT_TIMEOUT_S = 45.0  # whole attach; with imports and validation the command ends within a minute
PROBE_S = 6.0  # a refused port is retried this long (a head that is just starting)


def address_and_source(address: str | None) -> tuple[str | None, str]:
    """The cluster to attach to and where that came from ('--address' or 'RAY_ADDRESS')."""
    if address:
        return address, "--address"
    env = os.environ.get("RAY_ADDRESS")
    return (env, "RAY_ADDRESS") if env else (None, "")


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of 'host:port' or 'ray://host:port'; None for 'auto' and the like."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe(address: str, source: str, timeout_s: float = PROBE_S) -> None:
    """Refuse at once when nothing listens at host:port (Ray would retry it forever)."""
    hp = _host_port(address)
    if hp is None:
        return
    deadline = time.time() + timeout_s
    while True:
        try:
            with socket.create_connection(hp, timeout=min(5.0, max(deadline - time.time(), 0.5))):
                return
        except OSError as e:
            if time.time() >= deadline or isinstance(e, socket.gaierror):
                raise ConfigError(f"cannot reach the Ray cluster at {address} (from {source}): {e}. "
                                  "Check that the head is running and the address and port are right"
                                  + (", or unset RAY_ADDRESS to start a local Ray" if source == "RAY_ADDRESS" else "")
                                  ) from None
            time.sleep(1.0)


def connect(address: str, source: str, log) -> None:
    """ray.init(address) that gives up within CONNECT_TIMEOUT_S with exit 2 instead of hanging."""
    import ray

    t0 = time.time()
    probe(address, source)
    done = threading.Event()

    def give_up() -> None:
        if not done.wait(CONNECT_TIMEOUT_S - (time.time() - t0)):
            sys.stderr.write(f"error: the Ray cluster at {address} (from {source}) accepts connections but did "
                             f"not answer as a Ray head within {CONNECT_TIMEOUT_S:.0f} s; is that the head's "
                             "GCS port (default 6379)?\n")
            sys.stderr.flush()
            os._exit(2)  # ray.init cannot be interrupted from another thread

    threading.Thread(target=give_up, daemon=True).start()
    # a test's trial faults reach trials on the cluster's nodes (a Ray Job passes its own environment)
    fault = os.environ.get(faults.TRIAL_ENV)
    job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    extra = {"runtime_env": {"env_vars": {faults.TRIAL_ENV: fault}}} if fault and not job else {}
    try:
        ray.init(address=address, log_to_driver=True, **extra)
    except ConnectionError as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address} (from {source}): {e}") from None
    finally:
        done.set()
    log(f"[sweep] attached to the Ray cluster at {address} (from {source})")


STORAGE_PROBE_S = 60.0  # a node whose probe has not answered by then cannot reach the storage


def _probe(uri: str, names: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """On a node: why the storage cannot be written from there (None: it can), and which of `names` are set."""
    from localist import io

    return io.probe(uri), [n for n in names if os.environ.get(n)]


def check_storage(sweep_uri: str, where: str) -> None:
    """Exit 2 (ConfigError) unless every node of an attached cluster can write the sweep's object
    storage (a local path is the nodes' shared filesystem's to provide): one probe per node, naming
    what this shell sets for S3 that the failing nodes' environment lacks."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from localist import io

    if io.is_local(sweep_uri):
        return
    probe_task = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {n["NodeManagerAddress"] + " (node " + n["NodeID"][:8] + ")": probe_task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(sweep_uri, io.S3_ENV)
        for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=STORAGE_PROBE_S)
    failed, lacking = {}, set()
    for name, ref in refs.items():
        if ref not in ready:
            failed[name] = f"no answer within {STORAGE_PROBE_S:.0f} s"
            continue
        try:
            reason, present = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the probe task itself failed there
            reason, present = f"{type(e).__name__}: {e}", []
        if reason:
            failed[name] = reason.splitlines()[0][:300]
            lacking |= {k for k in io.S3_ENV if os.environ.get(k) and k not in present}
    if not failed:
        return
    what = "; ".join(f"{n}: {r}" for n, r in failed.items())
    hint = (f"they lack {', '.join(sorted(lacking))}, which this shell sets. Start the nodes with "
            f"{'it' if len(lacking) == 1 else 'them'} (or give them a role that may write the bucket), or run the "
            "sweep with `localist submit`, which passes them to the job" if lacking else
            "check the nodes' credentials (environment, role, ~/.aws) and the endpoint they reach")
    raise ConfigError(f"storage {sweep_uri}: {len(failed)} of {len(nodes)} node(s) of {where} cannot write it "
                      f"({what}): {hint}")


def request(cpu: float, gpu: float) -> dict[str, float]:
    """One trial's resources in Ray's names (what `resources:` in the sweep file asks for); for a
    trial of several workers, one worker's."""
    return {k: v for k, v in {"CPU": cpu, "GPU": gpu}.items() if v > 0}


def node_resources() -> list[dict[str, float]]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def _holds(node: dict[str, float], req: dict[str, float]) -> int:
    """How many of `req` (one worker's resources) fit on a node at once."""
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in req.items()) if req else 1


def _asked(req: dict[str, float], times: int = 1) -> str:
    return ", ".join(f"{v * times:g} {k}" for k, v in req.items())


def check_fits(req: dict[str, float], nodes: list[dict[str, float]], where: str, workers: int = 1,
               span_nodes: bool = True) -> None:
    """Exit 2 (ConfigError) unless the cluster can run one trial: some node has every resource one
    worker asks for, and there is room for all its workers (on one node unless they may span nodes)."""
    holds = [_holds(n, req) for n in nodes]
    if not any(holds):
        short = [k for k, v in req.items() if max((n.get(k, 0.0) for n in nodes), default=0.0) < v] or list(req)
        has = "; ".join(f"{k}: largest node has {max((n.get(k, 0.0) for n in nodes), default=0.0):g}, "
                        f"cluster total {sum(n.get(k, 0.0) for n in nodes):g}" for k in short)
        who = "one trial" if workers == 1 else f"one of a trial's {workers} workers"
        raise ConfigError(f"resources: {who} asks for {_asked(req)}, but no node of {where} ({len(nodes)} node"
                          f"{'s' if len(nodes) != 1 else ''}) has that ({has}). Lower `resources:` in the sweep "
                          "file, or run on a cluster with such nodes (--address)")
    if workers == 1:
        return
    trial = f"a trial of {workers} workers asks for {_asked(req, workers)}"
    if not span_nodes and max(holds) < workers:
        spans = " (the cluster has room for them across nodes)" if sum(holds) >= workers else ""
        raise ConfigError(f"resources: {trial} on one node (span_nodes: false), but the largest node of {where} "
                          f"holds {max(holds)} such worker(s){spans}. Let the workers span nodes "
                          "(resources.span_nodes: true), use fewer workers, or larger nodes")
    if sum(holds) < workers:
        totals = "; ".join(f"{k}: cluster total {sum(n.get(k, 0.0) for n in nodes):g}" for k in req)
        raise ConfigError(f"resources: {trial}, but all {len(nodes)} node(s) of {where} together hold "
                          f"{sum(holds)} such worker(s) at once ({totals}). Use fewer workers, or a larger "
                          "cluster (--address)")


def slots(req: dict[str, float], nodes: list[dict[str, float]], max_concurrent: int | None, n_runs: int,
          workers: int = 1, span_nodes: bool = True) -> int:
    """How many trials can run at once: per node, the scarcest resource decides how many workers
    fit; a trial takes `workers` of them (from one node unless they may span nodes); then the caps."""
    holds = [_holds(n, req) for n in nodes]
    at_once = sum(h // workers for h in holds) if not span_nodes else sum(holds) // workers
    return max(1, min(at_once or 1, max_concurrent or n_runs, n_runs))


# A Ray this tool starts itself serves this machine alone, so it needs no token. The one place this
# default is set (`start` below); tests and benchmarks start their local Ray through it.
LOCAL_AUTH = {"RAY_AUTH_MODE": "disabled"}


def loopback_only(ray) -> None:
    """Make the Ray about to start here listen on 127.0.0.1 only. ray.init turns "127.0.0.1" into
    the machine's outward address except in the single-machine mode Ray uses on macOS; its switch
    is read from the environment by the processes Ray starts, and from a private constant by this
    process, which has imported Ray already. Checked against the pinned Ray by the tests."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        raise RuntimeError(f"ray {ray.__version__} has no ray._private.ray_constants.ENABLE_RAY_CLUSTER: "
                           "the local Ray could listen beyond loopback; use the Ray version pyproject.toml pins")
    constants.ENABLE_RAY_CLUSTER = False


def start(address: str | None, log=print) -> str:
    """Start or attach to Ray; returns what the run is on, for messages ('local Ray', an address)."""
    import ray

    # Tune snapshots its state at every checkpoint (we want that for resume); don't warn about it.
    # (RAY_DEDUP_LOGS and RAY_AIR_NEW_OUTPUT are set by console.Console, before Ray is imported.)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    address, source = address_and_source(address)
    if address:
        connect(address, source, log)
        return f"the cluster at {address}"
    loopback_only(ray)
    for key, value in LOCAL_AUTH.items():
        os.environ.setdefault(key, value)
    ray.init(include_dashboard=False, log_to_driver=True)
    return "the local Ray on this machine"
