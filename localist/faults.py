"""Test-only fault injection, off unless LOCALIST_FAULT is set.

LOCALIST_FAULT=KIND@STEP[:MARKER] with KIND 'raise' (an exception at that step) or 'nan' (a
non-finite loss). With MARKER (a file path) the fault fires once: only while the file does not
exist, creating it. LOCALIST_FAULT_TRIAL limits it to one trial id.
"""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    pass


def check(step: int, trial_id: str) -> str | None:
    """The fault kind to apply at this step, or None."""
    spec = os.environ.get("LOCALIST_FAULT")
    if not spec:
        return None
    only = os.environ.get("LOCALIST_FAULT_TRIAL")
    if only and only != trial_id:
        return None
    kind, _, rest = spec.partition("@")
    at, _, marker = rest.partition(":")
    if step != int(at):
        return None
    if marker:
        if os.path.exists(marker):
            return None
        open(marker, "w").close()
    if kind == "raise":
        raise InjectedFault(f"injected fault at step {step} (LOCALIST_FAULT={spec})")
    return kind
