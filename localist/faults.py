"""Test-only fault injection; every hook is off unless its environment variable is set.

LOCALIST_FAULT - comma-separated trial faults, each KIND@STEP[:MARKER][#TRIAL_ID]:
  KIND 'raise' (an exception at that step), 'nan' (a non-finite loss) or 'kill' (the process
  SIGKILLs itself: a lost worker); with MARKER (a file path) it fires once, only while the file
  does not exist, creating it (in one process only, when several check at once); with #TRIAL_ID
  only in that trial. KIND 'wait': the trial waits before that step until MARKER exists (a test
  holds trials where it wants them, then lets them go), having created MARKER.held-TRIAL_ID (a
  test sees which trials are held).
LOCALIST_CRASH_AT - POINT[:MARKER]: the sweep driver SIGKILLs itself at that point
  ('prepare', 'collect'), once when a marker is given.
"""

from __future__ import annotations

import os
import signal
import time


TRIAL_ENV = "LOCALIST_FAULT"  # read where trials run: a driver attached to a cluster passes it on


class InjectedFault(RuntimeError):
    pass


def _fires_once(marker: str) -> bool:
    if not marker:
        return True
    try:  # created atomically: of the workers of a trial that check at once, one fires
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def check(step: int, trial_id: str) -> str | None:
    """The fault kind to apply at this step of this trial ('nan'), raising for 'raise' (after any 'wait')."""
    for spec in filter(None, os.environ.get(TRIAL_ENV, "").split(",")):
        spec, _, only = spec.partition("#")
        kind, _, rest = spec.partition("@")
        at, _, marker = rest.partition(":")
        if int(at) != step or (only and only != trial_id):
            continue
        if kind == "wait":
            if not os.path.exists(marker):
                open(f"{marker}.held-{trial_id}", "w").close()
            while not os.path.exists(marker):
                time.sleep(0.2)
            continue
        if not _fires_once(marker):
            continue
        if kind == "raise":
            raise InjectedFault(f"injected fault at step {step} (LOCALIST_FAULT={spec})")
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return kind
    return None


def crash_point(name: str) -> None:
    """Die here as a crashed driver would (no cleanup, no exception handlers)."""
    point, _, marker = os.environ.get("LOCALIST_CRASH_AT", "").partition(":")
    if point == name and _fires_once(marker):
        os.kill(os.getpid(), signal.SIGKILL)
