"""The sweep driver: validate, pretrain a base (`pretrain:`), prepare data once, run every trial on
Ray Tune, collect, aggregate.

`run` on a sweep whose storage already holds the same spec continues it (finished trials are
skipped), so a crashed driver is recovered by running the same command again or `resume`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Callable


from localist import io
from localist.config import ConfigError
from localist.data import prepare
from localist.errors import UserError
from orchestrator import layout
from orchestrator.sweep import console, preempt, pretrain, ray_start, status, tracking, train_workers, tuners
from orchestrator.sweep.collect import collect
from orchestrator.sweep.lock import SweepLock
from orchestrator.spec import SweepSpec, Trial, check_files, expand, load_saved, runs


EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C
LOG_GRACE_S = 1.5


class _Interrupted(Exception):
    """Ray Tune returned with trials unfinished (args[0]: how many)."""


def _unfinished(grid) -> int:
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return sum(t.status not in ("TERMINATED", "ERROR") for t in trials)


class StorageError(UserError, RuntimeError):
    """The sweep's storage failed while it ran; what was written before is intact."""

    exit_code = 3  # the input was fine, the run was cut short


def _storage_alive(sweep_uri: str, cause: BaseException | None = None) -> None:
    reason = io.probe(sweep_uri)
    if reason:
        raise StorageError(
            f"storage {sweep_uri} failed during the sweep ({reason}). Files of trials that finished "
            f"before are intact. Restore the storage, then run: localist sweep resume {sweep_uri}") from cause


def _prepare_data(trials: list[Trial], log) -> None:
    """Tokenise once in the driver, and find each partitioner's blocks once, so every trial on this
    machine only loads the cache."""
    seen, datasets = set(), {}
    for cfg in runs(trials).values():
        tokenizer = "tiny" if cfg.model.name == "tiny" else cfg.model.name
        key = (cfg.data.model_dump_json(), tokenizer)
        if key not in datasets:
            datasets[key] = prepare(cfg.data, tokenizer, log=log)
        loc = cfg.locality
        if (key, loc.partition, loc.min_len, loc.max_len) not in seen:
            seen.add((key, loc.partition, loc.min_len, loc.max_len))
            for split in ("train", "eval"):
                datasets[key].blocks(split, loc)


def _cluster_slots(spec: SweepSpec, trials: list[Trial], where: str, sweep_uri: str, log) -> int:
    """Refuse a sweep whose trial the cluster cannot hold; record how many trials run at once (for
    ETAs), counted for its trial of most workers (the GPUs, or CPUs, one trial takes)."""
    r = spec.resources
    req = ray_start.request(r.cpu, r.gpu)
    workers = train_workers.most_workers(runs(trials).values())
    nodes = ray_start.node_resources()
    ray_start.check_fits(req, nodes, where, workers, r.span_nodes)
    slots = ray_start.slots(req, nodes, spec.max_concurrent, max(len(runs(trials)), 1), workers, r.span_nodes)
    io.write_text(layout.driver_file(sweep_uri), json.dumps({"slots": slots, "where": where, "time": time.time()}))
    log(f"[sweep] {len(nodes)} node(s) on {where}: {slots} trial(s) at a time "
        f"({train_workers.per_trial_line(spec, workers)})")
    return slots


def tune_spec(spec: SweepSpec, trials: list[Trial], slots: int, log) -> SweepSpec:
    """The spec the Tuners run: with trials of several workers, max_concurrent defaults to the slots
    (the cluster's GPUs, or CPUs, over one trial's): Tune sees only their drivers, which take none."""
    if spec.max_concurrent or train_workers.most_workers(runs(trials).values()) <= 1:
        return spec
    log(f"[sweep] max_concurrent: {slots} (trials of several workers: Tune sees only their drivers)")
    return spec.model_copy(update={"max_concurrent": slots})


class _ResumeHint(logging.Filter):
    """Replaces Ray Tune's own `Tuner.restore(...)` advice with the command that fits this tool."""

    def __init__(self, sweep_uri: str):
        super().__init__()
        self.line = resume_line(sweep_uri)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "Tuner.restore" in msg:
            return False
        if "Stop signal received" in msg:
            record.msg, record.args = ("Stopping: Ray Tune saves its state (Ctrl-C again stops at once). "
                                       f"Continue later with: {self.line}"), ()
        return True


def resume_line(sweep_uri: str) -> str:
    return f"localist sweep resume {sweep_uri}"


class _Progress(threading.Thread):
    """Prints one status line every `every` seconds while Tune runs, and rewrites the runs' snapshot
    (status.json) each time: finished runs are kept from the last tick, only the others are read."""

    def __init__(self, sweep_uri: str, trials: list[Trial], concurrency: int, log, every: float = 20.0):
        super().__init__(daemon=True)
        self.sweep_uri, self.trials = sweep_uri, trials
        self.concurrency, self.log, self.every = concurrency, log, every
        self.started = time.time()
        self.halt = threading.Event()
        self.known: dict[str, dict] | None = None  # None at first: the snapshot an earlier driver left

    def run(self) -> None:
        while not self.halt.wait(self.every):
            try:
                rows = status.run_states(self.sweep_uri, self.trials, self.known)
                self.known = {r["run_id"]: r for r in rows}
                status.write_snapshot(self.sweep_uri, rows)
                self.log(f"[sweep] {status.summary_line(rows, self.concurrency, self.started)}")
            except Exception as e:  # progress must never kill the sweep
                self.log(f"[sweep] (progress unavailable: {e})")


def run(spec: SweepSpec, source: str, address: str | None = None, log: Callable[[str], None] = print,
        aggregate: bool = True, progress_every: float = 20.0, sweep_uri: str | None = None,
        verbose: bool = False, trial_lines: bool | None = None, grace_s: float = preempt.GRACE_S) -> int:
    """Run (or continue) a sweep. Returns the process exit code: 0 when every trial has a result.

    sweep_uri overrides <storage>/<name> (resume of a sweep folder that was renamed or copied).
    verbose: Ray's own console output instead of the quiet one (see orchestrator/sweep/console.py).
    trial_lines: each trial's progress lines on the console (None: only for sweeps of at most
    console.TRIAL_LINES_MAX_RUNS runs; a larger one shows its status line every progress_every s).
    grace_s: on SIGTERM, SIGUSR1 or `sweep stop`, how long running trials get to checkpoint.
    """
    trials = expand(spec, source)
    check_files(trials, source)  # also on resume: the corpus must be readable from here
    sweep_uri = sweep_uri or spec.uri
    tracking.prepare(spec.tracking, sweep_uri, source)
    with SweepLock(sweep_uri):
        spec_f = layout.spec_file(sweep_uri)
        text = layout.spec_text(spec)
        new = not io.exists(spec_f)
        if not new:
            if not layout.same_sweep(io.read_text(spec_f), spec):
                raise ConfigError(f"{source}: name: a different sweep named {spec.name!r} already exists at "
                                  f"{sweep_uri}; choose a new name or storage, or resume that one")
            log(f"[sweep] {sweep_uri} exists with this spec: continuing it (finished trials are kept)")
        if spec.search:
            log(f"[sweep] {spec.name}: search, then {'confirm' if spec.search.confirm else 'no confirm'} -> {sweep_uri}")
        else:
            log(f"[sweep] {spec.name}: {len(trials)} results from {len(runs(trials))} runs -> {sweep_uri}")
        hint = _ResumeHint(sweep_uri)
        tune_log = logging.getLogger("ray.tune.tune")  # where Tune logs its interrupt advice
        tune_log.addFilter(hint)
        n_runs = len(runs(trials))
        if trial_lines is None:
            trial_lines = n_runs <= console.TRIAL_LINES_MAX_RUNS
        quiet = console.Console(sweep_uri, verbose, log, trial_lines)  # before Ray is imported
        if not trial_lines and not verbose:
            log(f"[sweep] {n_runs} runs: each trial's lines go to the driver log only, the status line "
                f"comes every {progress_every:.0f} s (--trial-lines shows them)")
        import ray

        drain = preempt.Drain(sweep_uri, grace_s, log)
        try:
            drain.install()
            where = ray_start.start(address, log)
            quiet.attach()
            slots = _cluster_slots(spec, trials, where, sweep_uri, log)
            if ray_start.address_and_source(address)[0]:
                ray_start.check_storage(sweep_uri, where)
            tuned = tune_spec(spec, trials, slots, log)
            if new:  # only once nothing refused it: fixing the file and running again must just work
                io.write_text(spec_f, text)

            def fit(tuner, ticked: list[Trial] | None = None):
                ticker = None
                if ticked:
                    ticker = _Progress(sweep_uri, ticked, min(slots, len(runs(ticked))), log, progress_every)
                    ticker.start()
                try:
                    grid = tuner.fit()
                except Exception as e:
                    _storage_alive(sweep_uri, e)
                    raise
                finally:
                    drain.fit_ended()
                    if ticker:
                        ticker.halt.set()
                _storage_alive(sweep_uri)
                unfinished = _unfinished(grid)
                if unfinished or drain.stopping:  # Tune stopped early (Ctrl-C, a stop) and returned as if it had finished
                    raise _Interrupted(unfinished)
                return grid

            pretrain.ensure(spec, source, sweep_uri, log, fit, lambda ts: _prepare_data(ts, log), drain)
            _prepare_data(trials, log)  # (a pretrained base's tokenizer exists only now)
            t0 = time.time()
            if spec.search:
                from orchestrator.sweep import search_run

                trials = search_run.run(tuned, source, sweep_uri, log, fit, [drain.callback()])
            else:
                tuner, restored = tuners.grid_tuner(tuned, trials, sweep_uri, log, extra=[drain.callback()])
                if restored:
                    log("[sweep] restored Ray Tune state: unfinished and errored trials continue")
                tuners.mark_final_errors(fit(tuner, trials), sweep_uri)
            tuners.finished_checkpoints_removed(sweep_uri)
            log(f"[sweep] Ray Tune finished in {time.time() - t0:.1f}s")
            for line in tracking.hints(spec.tracking, sweep_uri):
                log(line)
        except _Interrupted as e:
            what = (f"stopped ({drain.by}), Tune's state saved" if drain.stopping
                    else f"Ray Tune stopped with {e.args[0]} trial(s) unfinished")
            log(f"[sweep] {what}; continue with: {hint.line}")
            return EXIT_INTERRUPTED
        except (KeyboardInterrupt, SystemExit):
            log(f"[sweep] interrupted; continue with: {hint.line}")
            raise
        finally:
            tune_log.removeFilter(hint)
            if ray.is_initialized():  # Ray forwards worker lines asynchronously: let the last ones
                time.sleep(LOG_GRACE_S)  # ("[trial] completed ...") arrive before it shuts down
            ray.shutdown()
            drain.uninstall()  # after Ray: held trials have gone with it
            quiet.close()
        code = finish(spec, trials, sweep_uri, log, aggregate)
        rows = status.run_states(sweep_uri, trials)
        status.write_snapshot(sweep_uri, rows)
        errored = status.counts(rows)["errored"]
        if errored:
            log(f"[sweep] {errored} run(s) failed every retry; to retry them: {hint.line}")
        return code


def finish(spec: SweepSpec, trials: list[Trial], sweep_uri: str, log, aggregate: bool = True) -> int:
    search_bad = 0
    if spec.search:
        from orchestrator.sweep import search_run

        search_bad = search_run.finish(spec, sweep_uri, log)
        if not trials:
            return 0 if search_bad == 0 else 1
    counts = collect(spec, trials, sweep_uri)
    log(f"[sweep] results: {counts} -> {layout.results_file(sweep_uri, 'trials')} (+ steps, layers, attention)")
    if aggregate:
        from orchestrator.analysis.aggregate import aggregate as run_aggregate

        out = run_aggregate(sweep_uri, echo=log)
        if out.get("report"):
            log(f"[sweep] report: {out['report']}")
    bad = sum(v for k, v in counts.items() if k not in ("completed", "diverged"))
    return 0 if bad == 0 and search_bad == 0 else 1


def resume(sweep_uri: str, address: str | None = None, log=print, aggregate: bool = True,
           verbose: bool = False, trial_lines: bool | None = None, grace_s: float = preempt.GRACE_S) -> int:
    """Continue the sweep stored at sweep_uri, wherever that folder now is and whatever its name."""
    if "://" not in sweep_uri:
        sweep_uri = os.path.abspath(os.path.expanduser(sweep_uri))
    spec = load_saved(sweep_uri)
    return run(spec, layout.spec_file(sweep_uri), address=address, log=log, aggregate=aggregate,
               sweep_uri=sweep_uri, verbose=verbose, trial_lines=trial_lines, grace_s=grace_s)
