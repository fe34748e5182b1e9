"""Stopping a running sweep without losing a step: SIGTERM or SIGUSR1 to the driver (what SLURM's
`--signal`, Kubernetes and `ray job stop` send), or `localist sweep stop PATH` from another shell.

The request is one small file on the sweep's storage (`layout.stop_file`), so it reaches every
node: the driver writes it when signalled (`sweep stop` writes it directly), and each running trial
watches for it (`Watcher`). A trial that sees it saves a checkpoint after its current step and
holds there (a trial that starts meanwhile trains one step first). The driver's `Drain` (a Tune
callback) waits until every running trial has saved that checkpoint, or started since, at most
`grace_s` seconds, then stops Ray Tune the way Tune stops on Ctrl-C: its state is saved, and the
driver exits with the resume line. A resume then continues every trial from the step it stopped
at. A second signal stops at once (trials resume from their last checkpoint); outside a Tune run a
signal stops the driver at once, as before (nothing is training).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

from localist import io
from localist.errors import UserError
from orchestrator import layout
from orchestrator.spec import load_saved

GRACE_S = 60.0  # default: how long the driver waits for running trials to checkpoint
POLL_S = 2.0  # how often trials and the driver look for a request on storage
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_CHECKPOINT = "stop_checkpoint"  # the report key a trial sets to 1 on the report carrying its stop's checkpoint


def request(sweep_uri: str, by: str) -> None:
    io.write_text(layout.stop_file(sweep_uri), json.dumps({"by": by, "time": time.time()}))


def requested(sweep_uri: str) -> dict | None:
    """The stop request on storage, or None (a file being written reads as a request too)."""
    f = layout.stop_file(sweep_uri)
    if not io.exists(f):
        return None
    try:
        return json.loads(io.read_text(f))
    except (OSError, ValueError):
        return {"by": "a stop request"}


def clear(sweep_uri: str) -> None:
    io.delete(layout.stop_file(sweep_uri))


class NoDriver(UserError, RuntimeError):
    """`sweep stop` on a sweep no driver is running (exit 2)."""


def stop(sweep_uri: str) -> str:
    """`localist sweep stop`: ask the sweep's running driver to stop; what to tell the user."""
    from orchestrator.sweep.lock import SweepLock

    load_saved(sweep_uri)  # not a sweep: ConfigError (exit 2) saying so
    alive, who = SweepLock(sweep_uri).holder()
    if not alive:
        raise NoDriver(f"no driver is running the sweep at {sweep_uri} ({who}): nothing to stop. "
                       f"To continue it: localist sweep resume {sweep_uri}")
    request(sweep_uri, f"localist sweep stop (pid {os.getpid()} on {socket.gethostname()})")
    return (f"stop requested for the driver of {sweep_uri} ({who}): each running trial saves a checkpoint "
            "at its next step, then the driver saves Tune's state and exits with the command that continues it")


# -- in a trial ---------------------------------------------------------------------------------------

class Watcher(threading.Thread):
    """Looks for the stop request every POLL_S seconds (its first look at once, before training),
    until it has seen one or is closed; called, says whether it has."""

    def __init__(self, sweep_uri: str, poll_s: float = POLL_S):
        super().__init__(daemon=True)
        self.uri, self.poll_s = sweep_uri, poll_s
        self.seen, self._closed = threading.Event(), threading.Event()
        self._look()

    def _look(self) -> None:
        try:
            if requested(self.uri) is not None:
                self.seen.set()
        except OSError:  # storage trouble is for the trial's own writes to report
            pass

    def run(self) -> None:
        while not self.seen.is_set() and not self._closed.wait(self.poll_s):
            self._look()

    def close(self) -> None:
        self._closed.set()

    def __call__(self) -> bool:
        return self.seen.is_set()


def hold() -> None:
    """Wait for the driver to end this trial's process (it does so once Tune has the checkpoint)."""
    while True:
        time.sleep(3600)


# -- in the driver ------------------------------------------------------------------------------------

class Drain:
    """The driver's side of a stop, across every Tuner of one driver run. `install()` before the
    first fit and `uninstall()` after the last; `callback()` goes into every Tuner's callbacks."""

    def __init__(self, sweep_uri: str, grace_s: float = GRACE_S, log=print):
        self.uri, self.grace_s, self.log = sweep_uri, grace_s, log
        self.since: float | None = None  # when this driver took a stop request
        self.by = ""
        self._signalled = False
        self._ready: set[str] = set()  # Tune trial ids that checkpointed (or started) since
        self._tune_stop = None  # the handler Tune installed in the running fit: stops its loop as Ctrl-C does
        self._stopped = False
        self._saved: dict[int, object] = {}
        self._next_look = 0.0
        self.relays: list[str] = []  # other folders whose trials this driver runs (a pretraining stage's)

    def relay(self, uri: str) -> None:
        """Trials of another folder (their watchers look there) run under this driver: a stop reaches them too."""
        clear(uri)
        self.relays.append(uri)

    def install(self) -> None:
        clear(self.uri)  # a request no driver took (its driver ended first) is not for this one
        if threading.current_thread() is threading.main_thread():
            self._saved = {s: signal.getsignal(s) for s in SIGNALS}
            self._handlers()

    def uninstall(self) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)
        for uri in (self.uri, *self.relays):
            try:
                clear(uri)
            except OSError:
                pass

    def _handlers(self) -> None:
        if self._saved:
            for s in SIGNALS:
                signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        """In a fit only flags it: the Tune loop's next turn (in this thread) writes the request."""
        if self._tune_stop is None:  # no trial is training: stop now, as before
            raise SystemExit(128 + signum)
        if self._signalled or self.since is not None:  # a second signal: stop now
            self._stopped = True
            self._tune_stop(signal.SIGUSR1, frame)
            return
        self._signalled = True
        self.by = f"{signal.Signals(signum).name} to the driver"

    def fit_ended(self) -> None:
        """After each fit: Tune's handler is Tune's no more."""
        self._tune_stop = None

    @property
    def stopping(self) -> bool:
        return self.since is not None or self._signalled

    def _take(self) -> None:
        """Notice a request (a signal, or `sweep stop`'s file) and make it the trials' to see."""
        if self.since is not None:
            return
        if self._signalled:
            request(self.uri, f"{self.by} (pid {os.getpid()} on {socket.gethostname()})")
        else:
            if time.time() < self._next_look:
                return
            self._next_look = time.time() + POLL_S
            found = requested(self.uri)
            if found is None:
                return
            self.by = found.get("by", "a stop request")
        for uri in self.relays:
            request(uri, self.by)
        self.since = time.time()
        self.log(f"[sweep] stop requested ({self.by}): every running trial saves a checkpoint at its next step; "
                 f"waiting up to {self.grace_s:g} s (a second signal stops at once)")

    def callback(self):
        """The Tune callback of this drain (one per driver run; every Tuner gets it)."""
        from ray import tune

        class StopOnRequest(tune.Callback):
            def __init__(self, drain: "Drain"):
                self.drain = drain

            def __getstate__(self):  # Tune pickles its run config (tuner.pkl); a restore gets new callbacks
                return {}

            def setup(self, **info):
                if getattr(self, "drain", None):
                    self.drain._setup()

            def on_trial_start(self, iteration, trials, trial, **info):
                if getattr(self, "drain", None):
                    self.drain._started(trial)

            def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
                # Tune registers it right after this call; last_result is the report that carried it
                if getattr(self, "drain", None) and (trial.last_result or {}).get(STOP_CHECKPOINT):
                    self.drain._checkpointed(trial)

            def on_step_end(self, iteration, trials, **info):
                if getattr(self, "drain", None):
                    self.drain._step(trials)

        return StopOnRequest(self)

    def _setup(self) -> None:
        """Tune has just installed its own SIGUSR1 (and SIGINT) handler for this fit: keep it to stop
        Tune with, and take SIGUSR1 back."""
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if self._saved and tune_stop != self._on_signal:
            self._tune_stop = tune_stop
            self._handlers()

    def _started(self, trial) -> None:
        if self.since is not None:  # it sees the request at its start: it has nothing to save yet
            self._ready.add(trial.trial_id)

    def _checkpointed(self, trial) -> None:
        """It saved a checkpoint because it saw the request (not one of its checkpoint_every)."""
        self._ready.add(trial.trial_id)

    def _step(self, trials) -> None:
        self._take()
        if self.since is None or self._stopped:
            return
        waiting = [t for t in trials if t.status == "RUNNING" and t.trial_id not in self._ready]
        late = time.time() - self.since > self.grace_s
        if waiting and not late:
            return
        if waiting:
            self.log(f"[sweep] {len(waiting)} trial(s) did not checkpoint within the {self.grace_s:g} s grace "
                     f"({', '.join(sorted(str(t) for t in waiting))}): they resume from their last checkpoint")
        else:
            self.log(f"[sweep] every running trial saved a checkpoint in {time.time() - self.since:.1f} s; "
                     "stopping Ray Tune")
        self._stopped = True
        if callable(self._tune_stop):
            self._tune_stop(signal.SIGUSR1, None)
