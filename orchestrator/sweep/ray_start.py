"""Starting Ray for a sweep: a private local Ray on loopback, or an existing cluster attached to
within a minute, and what that cluster can run, asked before any trial starts.

Ray's own `ray.init(address=...)` retries an address that does not answer forever, and Tune
keeps a trial whose resources no node has "pending" forever; both look like a slow start to a
user. Here both become an exit-2 error within a minute that names the address or the resource.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time

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
    try:
        ray.init(address=address, log_to_driver=True)
    except ConnectionError as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address} (from {source}): {e}") from None
    finally:
        done.set()
    log(f"[sweep] attached to the Ray cluster at {address} (from {source})")


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
