"""One driver per sweep: a second `sweep run` on the same storage refuses instead of corrupting it.

Local storage uses an advisory fcntl lock, which the kernel releases when the holder dies (so a
SIGKILLed driver never leaves a stale lock). Object stores have no such lock: the driver keeps a
lease object fresh and a new driver refuses while the lease is younger than LEASE_S, unless the
lease's driver ran on this machine and its process is gone (a killed driver, or the lost head of a
one-machine cluster): then its lease is stale at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time

from localist import io
from localist.errors import UserError
from orchestrator import layout

LEASE_S = 120.0


def _started(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc), to tell it from a later one of its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _gone(holder: dict) -> bool:
    """The lease's driver ran on this machine and its process has ended (False when not known)."""
    if holder.get("host") != socket.gethostname() or "pid" not in holder or not os.path.isdir("/proc/self"):
        return False
    started = _started(int(holder["pid"]))
    return started is None or (holder.get("started") is not None and started != holder["started"])


class SweepLocked(UserError, RuntimeError):
    """Another driver holds the sweep: the second one refuses (exit 2)."""


class SweepLock:
    def __init__(self, sweep_uri: str):
        self.uri = layout.lock_file(sweep_uri)
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "heartbeat": time.time(),
                "started": _started(os.getpid())}

    def acquire(self) -> "SweepLock":
        if io.is_local(self.uri):
            path = io.resolve(self.uri)[1]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                raise SweepLocked(self._message(other)) from None
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(self._holder()).encode())
            self._fd = fd
            return self
        if io.exists(self.uri):
            other = io.read_text(self.uri)
            try:
                h = json.loads(other)
                fresh = time.time() - h["heartbeat"] < LEASE_S and not _gone(h)
            except (ValueError, KeyError, TypeError):
                fresh = False
            if fresh:
                raise SweepLocked(self._message(other))
        io.write_text(self.uri, json.dumps(self._holder()))
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        holder = self._holder()
        while not self._stop.wait(LEASE_S / 4):
            holder["heartbeat"] = time.time()
            try:
                io.write_text(self.uri, json.dumps(holder))
            except OSError:
                pass

    def _message(self, holder_json: str) -> str:
        try:
            h = json.loads(holder_json)
            who = f"pid {h['pid']} on {h['host']} since {time.strftime('%H:%M:%S', time.localtime(h['since']))}"
        except (ValueError, KeyError):
            who = "another driver"
        return (f"the sweep at {self.uri.rsplit('/', 1)[0]} is already being run by {who}; "
                "wait for it to finish or stop it, then use `localist sweep resume`")

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread:
            self._stop.set()
            self._thread.join(timeout=5)
            try:
                io.delete(self.uri)
            except OSError:
                pass

    def holder(self) -> tuple[bool, str]:
        """Whether a driver holds this sweep now, and who: read without taking the lock.

        Local storage: a non-blocking shared flock is tried and dropped at once (the kernel's lock
        is the truth; a pid may have been reused).
        Object stores: the lease's heartbeat is younger than LEASE_S.
        """
        if not io.exists(self.uri):
            return False, "no driver has run it from this storage"
        try:
            h = json.loads(io.read_text(self.uri))
            who = f"pid {h['pid']} on {h['host']}"
        except (OSError, ValueError, KeyError):
            h, who = {}, "a driver"
        if not io.is_local(self.uri):
            age = time.time() - h.get("heartbeat", 0)
            if _gone(h):
                return False, f"last run by {who}, which is gone"
            return age < LEASE_S, f"{who}, lease renewed {age:.0f} s ago"
        fd = os.open(io.resolve(self.uri)[1], os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False, f"last run by {who}"
        except BlockingIOError:
            return True, who
        finally:
            os.close(fd)

    def __enter__(self) -> "SweepLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
