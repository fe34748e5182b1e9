"""The sweep driver: validate, prepare data once, run every trial on Ray Tune, collect, aggregate.

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

import yaml

from localist import io
from localist.config import ConfigError
from localist.data import prepare
from orchestrator import console, layout, raycluster, status, tracking
from orchestrator.collect import collect
from orchestrator.lock import SweepLock
from orchestrator.spec import SweepSpec, Trial, expand, load_saved, runs  # noqa: F401 (load_saved: cli)


EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C
LOG_GRACE_S = 1.5


class _Interrupted(Exception):
    """Ray Tune returned with trials unfinished (args[0]: how many)."""


def _unfinished(grid) -> int:
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return sum(t.status not in ("TERMINATED", "ERROR") for t in trials)


class StorageError(RuntimeError):
    """The sweep's storage failed while it ran; what was written before is intact."""


def _storage_alive(sweep_uri: str, cause: BaseException | None = None) -> None:
    reason = io.probe(sweep_uri)
    if reason:
        raise StorageError(
            f"storage {sweep_uri} failed during the sweep ({reason}). Files of trials that finished "
            f"before are intact. Restore the storage, then run: localist sweep resume {sweep_uri}") from cause


def _saved_spec(spec: SweepSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def same_sweep(saved_text: str, spec: SweepSpec) -> bool:
    """Equal apart from where it is stored (a sweep folder may be moved or copied)."""
    try:  # through the schema, so keys added since with their defaults compare equal
        saved = SweepSpec.model_validate(yaml.safe_load(saved_text) or {}).model_dump(mode="json")
    except ValueError:
        return False
    loose = ("storage", "tracking")  # where results and metrics go does not change the sweep
    return ({k: v for k, v in saved.items() if k not in loose} ==
            {k: v for k, v in spec.model_dump(mode="json").items() if k not in loose})


def _prepare_data(trials: list[Trial], log) -> None:
    """Tokenise once in the driver, so every trial on this machine only loads the cache."""
    seen = set()
    for cfg in runs(trials).values():
        tokenizer = "tiny" if cfg.model.name == "tiny" else cfg.model.name
        key = (cfg.data.model_dump_json(), tokenizer)
        if key not in seen:
            seen.add(key)
            prepare(cfg.data, tokenizer, log=log)


def _init_ray(address: str | None, log=print) -> str:
    """Start or attach to Ray; returns what the run is on, for messages ('local Ray', an address)."""
    import ray

    # Tune snapshots its state at every checkpoint (we want that for resume); don't warn about it.
    # (RAY_DEDUP_LOGS and RAY_AIR_NEW_OUTPUT are set by console.Console, before Ray is imported.)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    address, source = raycluster.address_and_source(address)
    if address:
        raycluster.connect(address, source, log)
        return f"the cluster at {address}"
    else:
        # A private local Ray that listens on loopback only.
        # A private Ray on loopback only. ray.init turns "127.0.0.1" into the machine's address,
        # except in the single-machine mode Ray uses on macOS, which this switch selects.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for the processes Ray starts
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False  # for this one, imported already
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # nothing but this machine can reach it
        ray.init(include_dashboard=False, log_to_driver=True)
        return "the local Ray on this machine"


def _cluster_slots(spec: SweepSpec, n_runs: int, where: str, sweep_uri: str, log) -> int:
    """Refuse a sweep whose trial fits on no node; record how many trials run at once (for ETAs)."""
    req = raycluster.request(spec.resources.cpu, spec.resources.gpu)
    nodes = raycluster.node_resources()
    raycluster.check_fits(req, nodes, where)
    slots = raycluster.slots(req, nodes, spec.max_concurrent, n_runs)
    io.write_text(layout.driver_file(sweep_uri), json.dumps({"slots": slots, "where": where, "time": time.time()}))
    log(f"[sweep] {len(nodes)} node(s) on {where}: {slots} trial(s) at a time")
    return slots


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


def _remove_checkpoints(trial_tune_dir: str) -> None:
    for name in io.listdir(trial_tune_dir):
        if name.startswith("checkpoint_"):
            io.delete(io.join(trial_tune_dir, name))


def _finished_checkpoints_removed(sweep_uri: str, trials: list[Trial]) -> None:
    """A trial with a result is never resumed: its Tune checkpoints only cost storage."""
    tune_dir = layout.tune_dir(sweep_uri)
    for run_id in runs(trials):
        if io.exists(io.join(layout.trial_dir(sweep_uri, run_id), "trial.parquet")):
            _remove_checkpoints(io.join(tune_dir, run_id))


def _checkpoint_cleaner():
    """A Tune callback that removes a trial's checkpoints as soon as it completes (not on error:
    an errored trial is retried from its checkpoint by `resume`)."""
    from ray import tune

    class RemoveFinishedCheckpoints(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            import pyarrow.fs as pafs

            try:  # Tune's own view of where the trial lives, right even for a moved sweep folder
                fs, path = trial.storage.storage_filesystem, trial.storage.trial_fs_path
                for entry in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                    if entry.base_name.startswith("checkpoint_") and entry.type == pafs.FileType.Directory:
                        fs.delete_dir(entry.path)
            except Exception:  # never fail the sweep over this: the pass after fit() removes them too
                pass

    return RemoveFinishedCheckpoints()


class _Progress(threading.Thread):
    """Prints one status line every `every` seconds while Tune runs."""

    def __init__(self, sweep_uri: str, trials: list[Trial], concurrency: int, log, every: float = 20.0):
        super().__init__(daemon=True)
        self.args = (sweep_uri, trials)
        self.concurrency, self.log, self.every = concurrency, log, every
        self.started = time.time()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            try:
                df = status.run_states(*self.args)
                self.log(f"[sweep] {status.summary_line(df, self.concurrency, self.started)}")
            except Exception as e:  # progress must never kill the sweep
                self.log(f"[sweep] (progress unavailable: {e})")


def run_callbacks(spec: SweepSpec, sweep_uri: str) -> list:
    """Tune callbacks of every Tuner of a sweep: the trackers, then the checkpoint cleaner."""
    return tracking.callbacks(spec.tracking, sweep_uri, spec.name) + [_checkpoint_cleaner()]


def run_config(spec: SweepSpec, path: str, fs, callbacks: list):
    """What every Tuner of a sweep shares: its storage folder, trackers, retries, kept checkpoints."""
    from ray import tune

    parent, name = path.rstrip("/").rsplit("/", 1)
    return tune.RunConfig(name=name, storage_path=parent, storage_filesystem=fs, verbose=0, callbacks=callbacks,
                          failure_config=tune.FailureConfig(max_failures=spec.retries),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints))


def restore(path: str, fn, fs, callbacks: list, param_space: dict | None = None):
    """Tuner.restore with this run's callbacks: Tune would reuse those pickled by the first run
    (the spec's tracking may have changed since). Ray Client tuners keep theirs (no public hook)."""
    from ray import tune

    # param_space again: a searcher restored from state saved before it took the space needs it
    tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True, storage_filesystem=fs,
                               param_space=param_space)
    local = getattr(tuner, "_local_tuner", None)
    if local is not None:
        local.get_run_config().callbacks = callbacks
    return tuner


def _tuner(spec: SweepSpec, trials: list[Trial], sweep_uri: str, tune_uri: str | None = None):
    """tune_uri: the experiment folder (default <sweep>/tune; a search's later seed rounds use others)."""
    from ray import tune

    from orchestrator.trainable import sweep_trial

    run_cfgs = {k: v.model_dump(mode="json") for k, v in runs(trials).items()}
    fn = tune.with_parameters(sweep_trial, runs=run_cfgs, sweep_uri=sweep_uri, cpus=spec.resources.cpu)
    fn = tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    # Tune gets the same pyarrow filesystem our own files use, so local paths, file://, s3://
    # (with an endpoint override) and gs:// all behave alike.
    fs, path = io.resolve(tune_uri or layout.tune_dir(sweep_uri))
    callbacks = run_callbacks(spec, sweep_uri)
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        return restore(path, fn, fs, callbacks), True
    tuner = tune.Tuner(
        fn,
        param_space=tracking.param_space(run_cfgs),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.max_concurrent,
            trial_name_creator=lambda t: t.config["trial_id"],
            trial_dirname_creator=lambda t: t.config["trial_id"],
            reuse_actors=True,  # a worker keeps torch/transformers imported between trials
        ),
        run_config=run_config(spec, path, fs, callbacks),
    )
    return tuner, False


def run(spec: SweepSpec, source: str, address: str | None = None, log: Callable[[str], None] = print,
        aggregate: bool = True, progress_every: float = 20.0, sweep_uri: str | None = None,
        verbose: bool = False) -> int:
    """Run (or continue) a sweep. Returns the process exit code: 0 when every trial has a result.

    sweep_uri overrides <storage>/<name> (resume of a sweep folder that was renamed or copied).
    verbose: Ray's own console output instead of the quiet one (see orchestrator/console.py).
    """
    trials = expand(spec, source)
    sweep_uri = sweep_uri or spec.uri
    tracking.prepare(spec.tracking, sweep_uri, source)
    with SweepLock(sweep_uri):
        spec_f = layout.spec_file(sweep_uri)
        text = _saved_spec(spec)
        if io.exists(spec_f):
            if not same_sweep(io.read_text(spec_f), spec):
                raise ConfigError(f"{source}: name: a different sweep named {spec.name!r} already exists at "
                                  f"{sweep_uri}; choose a new name or storage, or resume that one")
            log(f"[sweep] {sweep_uri} exists with this spec: continuing it (finished trials are kept)")
        else:
            io.write_text(spec_f, text)
        if spec.search:
            log(f"[sweep] {spec.name}: search, then {'confirm' if spec.search.confirm else 'no confirm'} -> {sweep_uri}")
        else:
            log(f"[sweep] {spec.name}: {len(trials)} results from {len(runs(trials))} runs -> {sweep_uri}")
        hint = _ResumeHint(sweep_uri)
        tune_log = logging.getLogger("ray.tune.tune")  # where Tune logs its interrupt advice
        tune_log.addFilter(hint)
        quiet = console.Console(sweep_uri, verbose, log)  # before Ray is imported
        import ray

        try:
            where = _init_ray(address, log)
            quiet.attach()
            slots = _cluster_slots(spec, max(len(runs(trials)), 1), where, sweep_uri, log)
            _prepare_data(trials, log)

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
                    if ticker:
                        ticker.halt.set()
                _storage_alive(sweep_uri)
                unfinished = _unfinished(grid)
                if unfinished:  # Tune stopped early (Ctrl-C, SIGUSR1) and returned as if it had finished
                    raise _Interrupted(unfinished)
                return grid

            t0 = time.time()
            if spec.search:
                from orchestrator import search_run

                trials = search_run.run(spec, source, sweep_uri, log, fit)
            else:
                tuner, restored = _tuner(spec, trials, sweep_uri)
                if restored:
                    log("[sweep] restored Ray Tune state: unfinished and errored trials continue")
                _mark_final_errors(fit(tuner, trials), sweep_uri)
            _finished_checkpoints_removed(sweep_uri, trials)
            log(f"[sweep] Ray Tune finished in {time.time() - t0:.1f}s")
            for line in tracking.hints(spec.tracking, sweep_uri):
                log(line)
        except _Interrupted as e:
            log(f"[sweep] Ray Tune stopped with {e.args[0]} trial(s) unfinished; continue with: {hint.line}")
            return EXIT_INTERRUPTED
        except (KeyboardInterrupt, SystemExit):
            log(f"[sweep] interrupted; continue with: {hint.line}")
            raise
        finally:
            tune_log.removeFilter(hint)
            if ray.is_initialized():  # Ray forwards worker lines asynchronously: let the last ones
                time.sleep(LOG_GRACE_S)  # ("[trial] completed ...") arrive before it shuts down
            ray.shutdown()
            quiet.close()
        code = finish(spec, trials, sweep_uri, log, aggregate)
        errored = status.counts(status.run_states(sweep_uri, trials))["errored"]
        if errored:
            log(f"[sweep] {errored} run(s) failed every retry; to retry them: {hint.line}")
        return code


def _mark_final_errors(grid, sweep_uri: str) -> None:
    """A trial that failed every retry: its error.json becomes final (status 'errored')."""
    for r in grid:
        if r.error is None:
            continue
        tid = r.config.get("trial_id") or os.path.basename(r.path.rstrip("/"))  # search trials: named by Tune
        f = io.join(layout.trial_dir(sweep_uri, tid), "error.json")
        err = json.loads(io.read_text(f)) if io.exists(f) else {"error": str(r.error).splitlines()[-1]}
        err["final"] = True
        io.write_text(f, json.dumps(err))


def trials_of(spec: SweepSpec, sweep_uri: str, source: str, check_paths: bool = True) -> list[Trial]:
    """The ordinary trials of a sweep: its grid, or a search's confirmation (once the search ended)."""
    if spec.search:
        from orchestrator.search import confirm_trials

        return confirm_trials(spec, sweep_uri, source, check_paths)
    return expand(spec, source, check_paths)


def finish(spec: SweepSpec, trials: list[Trial], sweep_uri: str, log, aggregate: bool = True) -> int:
    search_bad = 0
    if spec.search:
        from orchestrator import search_run

        search_bad = search_run.finish(spec, sweep_uri, log)
        if not trials:
            return 0 if search_bad == 0 else 1
    counts = collect(spec, trials, sweep_uri)
    results = layout.results_dir(sweep_uri)
    log(f"[sweep] results: {counts} -> {results}/trials.parquet (+ steps, layers, attention)")
    if aggregate:
        from orchestrator.aggregate import aggregate as run_aggregate

        out = run_aggregate(sweep_uri, echo=log)
        if out.get("report"):
            log(f"[sweep] report: {out['report']}")
    bad = sum(v for k, v in counts.items() if k not in ("completed", "diverged"))
    return 0 if bad == 0 and search_bad == 0 else 1


def resume(sweep_uri: str, address: str | None = None, log=print, aggregate: bool = True,
           verbose: bool = False) -> int:
    """Continue the sweep stored at sweep_uri, wherever that folder now is and whatever its name."""
    if "://" not in sweep_uri:
        sweep_uri = os.path.abspath(os.path.expanduser(sweep_uri))
    spec = load_saved(sweep_uri)
    return run(spec, layout.spec_file(sweep_uri), address=address, log=log, aggregate=aggregate,
               sweep_uri=sweep_uri, verbose=verbose)
