"""What a sweep prints: trial progress and the sweep's own lines, not Ray's and Accelerate's chatter.

Every line the Ray workers print (Accelerate's "Removed shared tensor ...", Ray's "Checkpoint
successfully created at ...", our trial lines) and every Ray/Tune log record of the driver goes
to `<sweep>/logs/driver-<UTC time>.log`. The console keeps our own tagged lines (`[trial-id] ...`,
`[data] ...`, `[sweep] ...`), worker lines that report an error, and Ray's warnings and errors;
object storage retries (localist.io) go to the file only, the driver's and the trials' alike.
`verbose=True` leaves Ray's console output exactly as Ray makes it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time

from localist import io
from orchestrator import layout

OURS = re.compile(r"^\[[A-Za-z0-9][A-Za-z0-9._-]*\] ")  # "[peak-1__quintic__s2] step ...", "[data] ..."
SWEEP_LINE = re.compile(r"^\[(sweep|data)\] ")  # the sweep's own lines, shown even when trial lines are not
TRIAL_LINES_MAX_RUNS = 64  # a larger sweep shows its status line every interval, not each trial's lines
PROBLEM = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(Error|Exception)\b|\b(ERROR|CRITICAL)\b")


class _OneLineErrors(logging.Formatter):
    """A failed trial's record on the console: its message and the exception's last line, not
    Ray's 50-line traceback (that goes to the log file; the sweep's summary lists the error)."""

    def __init__(self, inner: logging.Formatter, log: str):
        super().__init__()
        self.inner, self.log = inner, log

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_info:
            return self.inner.format(record)
        last = (str(record.exc_info[1]).strip().splitlines() or [type(record.exc_info[1]).__name__])[-1]
        short = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None,
                                       "msg": f"{record.getMessage()}: {last} (traceback in {self.log})",
                                       "args": ()})
        return self.inner.format(short)


class Console:
    """Quiet console for one driver run: create before Ray is imported, `attach()` right after
    `ray.init`, `close()` after `ray.shutdown`."""

    def __init__(self, sweep_uri: str, verbose: bool = False, log=print, trial_lines: bool = True):
        """trial_lines=False: each trial's own lines (progress, completion) go to the log file only;
        the console keeps the sweep's lines (its status line every interval) and problems."""
        self.verbose, self.log, self.trial_lines = verbose, log, trial_lines
        self.uri = layout.driver_log_file(sweep_uri, time.time())
        self._file = self._handler = None
        self._levels: list[tuple[logging.Handler, int]] = []
        # Ray reads these when it is imported / when Tune starts, so they must be set first.
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every line, never "[repeated 3x across cluster]"
        if verbose:
            return
        # Tune's legacy reporter prints nothing at verbose=0; the new one still prints its header.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # MLflow's INFO lines ("Creating initial MLflow database tables...") are routine; warnings still show.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        import ray  # noqa: F401 - installs Ray's console handler, which we turn down to warnings

        if io.is_local(self.uri):
            path = io.resolve(self.uri)[1]
            os.makedirs(os.path.dirname(path), exist_ok=True)
        else:  # object stores cannot append: write locally, upload at close()
            fd, path = tempfile.mkstemp(prefix="localist-driver-", suffix=".log")
            os.close(fd)
        self._file = open(path, "a", buffering=1)
        self._handler = logging.StreamHandler(self._file)  # ray.init gives it Ray's format
        ray_logger = logging.getLogger("ray")
        for h in ray_logger.handlers:
            self._levels.append((h, h.level))
            h.setLevel(max(h.level, logging.WARNING))
        ray_logger.addHandler(self._handler)
        io.log.addHandler(self._handler)  # storage retries: the log file only

    def attach(self) -> None:
        """After ray.init: worker output goes through `_worker_lines` instead of Ray's printer."""
        if self._file is None:
            return
        for h, _ in self._levels:  # ray.init has just reset every handler's formatter
            h.setFormatter(_OneLineErrors(h.formatter or logging.Formatter(), self.uri))
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

            dispatcher.remove_handler("ray_print_logs")
            dispatcher.add_handler("localist_console", self._worker_lines)
        except ImportError:  # another Ray version: Ray keeps printing worker lines itself
            pass
        self.log(f"[sweep] Ray, Tune and Accelerate messages -> {self.uri} (--verbose prints them here)")

    def _worker_lines(self, data: dict) -> None:
        """Called by Ray's log thread with a batch of one worker's stdout or stderr lines."""
        where = f"pid={data.get('pid')}" + (f", ip={data.get('ip')}" if data.get("ip") != data.get("localhost") else "")
        sink = sys.stderr if data.get("is_err") else sys.stdout
        pid = data.get("pid")
        lines = data.get("lines", [])
        if pid == "autoscaler":  # a status table every few seconds; Ray prints only its events
            lines = [x.split(":event_summary:", 1)[1] for x in lines if ":event_summary:" in x]
        for line in lines:
            self._file.write(f"({where}) {line}\n")
            if line.startswith(io.RETRY_TAG):  # a trial's storage retry: routine, the log file only
                continue
            if OURS.match(line):
                if self.trial_lines or SWEEP_LINE.match(line) or PROBLEM.search(line):
                    print(line, file=sink, flush=True)
            elif pid == "raylet" or PROBLEM.search(line):  # the raylet forwards only its warnings
                print(f"({where}) {line}", file=sink, flush=True)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

            dispatcher.remove_handler("localist_console")
        except ImportError:
            pass
        logging.getLogger("ray").removeHandler(self._handler)
        io.log.removeHandler(self._handler)
        for h, level in self._levels:
            h.setLevel(level)
            if isinstance(h.formatter, _OneLineErrors):
                h.setFormatter(h.formatter.inner)
        self._file.close()
        if not io.is_local(self.uri):
            try:
                with open(self._file.name) as f:
                    io.write_text(self.uri, f.read())
                os.unlink(self._file.name)
            except Exception as e:  # the storage may be what failed; the sweep's own error matters more
                print(f"[sweep] driver log kept at {self._file.name} (upload failed: {e})", file=sys.stderr)
        self._file = None
