"""The Ray Tune plumbing every Tuner of a sweep shares (grid, search, seed rounds): its run config
and callbacks, restore with this run's callbacks, checkpoint removal, final errors."""

from __future__ import annotations

import os

from localist import io, trial_files
from orchestrator import layout
from orchestrator.spec import SweepSpec, Trial, runs
from orchestrator.sweep import grid_state, tracking, train_workers, tune_state


def finished_checkpoints_removed(sweep_uri: str) -> None:
    """After fit, once Tune's state is final: the checkpoints of trials that never resume again (a
    trial with a result, any trial of a search that ended) only cost storage. Errored ones stay."""
    for experiment, search in layout.tune_experiments(sweep_uri).items():
        ended = search is not None and io.exists(layout.search_file(sweep_uri, search))
        for name in io.listdir(experiment):
            trial = layout.trial_dir(sweep_uri, name)  # Tune's own files there have no trial folder
            if io.exists(trial) and (ended or trial_files.has_result(trial)):
                tune_state.remove_checkpoints(io.join(experiment, name))


def checkpoint_cleaner():
    """A Tune callback that empties a trial's checkpoints as soon as it completes (not on error: an
    errored trial is retried from its checkpoint by `resume`), so finished trials hold no model
    copies while a long sweep runs. Emptied, not removed: a driver killed before Tune saved the
    trial as finished resumes it from that checkpoint, and Tune refuses one that is gone; the
    trainable then reports the trial's result (or restarts a stopped one). The folders go after
    fit (`finished_checkpoints_removed`)."""
    from ray import tune

    class EmptyFinishedCheckpoints(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            import pyarrow.fs as pafs

            try:  # Tune's own view of where the trial lives, right even for a moved sweep folder
                fs, path = trial.storage.storage_filesystem, trial.storage.trial_fs_path
                for entry in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                    is_dir = entry.type == pafs.FileType.Directory
                    if is_dir and entry.base_name == layout.TRAIN_RUN:  # never resumed: a rerun reports the result
                        fs.delete_dir(entry.path)
                    elif is_dir and entry.base_name.startswith(layout.TUNE_CHECKPOINT_PREFIX):
                        fs.delete_dir_contents(entry.path)
                        with fs.open_output_stream(f"{entry.path}/{layout.CHECKPOINT_EMPTIED}") as f:
                            f.write(b"emptied when the trial completed; its result is in trials/<run_id>/\n")
            except Exception:  # never fail the sweep over this: the pass after fit() removes them too
                pass

    return EmptyFinishedCheckpoints()


def run_callbacks(spec: SweepSpec, sweep_uri: str, extra: list = ()) -> list:
    """Tune callbacks of every Tuner of a sweep: the trackers, the checkpoint cleaner, then the
    driver's own (`extra`: its stop on request, orchestrator/sweep/preempt.py)."""
    return tracking.callbacks(spec.tracking, sweep_uri, spec.name) + [checkpoint_cleaner(), *extra]


def run_config(spec: SweepSpec, path: str, fs, callbacks: list):
    """What every Tuner of a sweep shares: its storage folder, trackers, retries, kept checkpoints."""
    from ray import tune

    parent, name = path.rstrip("/").rsplit("/", 1)
    return tune.RunConfig(name=name, storage_path=parent, storage_filesystem=fs, verbose=0, callbacks=callbacks,
                          failure_config=tune.FailureConfig(max_failures=spec.retries),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints))


def restore(uri: str, fn, callbacks: list, log, param_space: dict | None = None):
    """Tuner.restore of the experiment at uri, each trial pointed first at its newest whole
    checkpoint on storage (`tune_state.mend`), with this run's callbacks: Tune would reuse those
    pickled by the first run (the spec's tracking may have changed since). Ray Client tuners keep
    theirs (no public hook)."""
    from ray import tune

    tune_state.mend(uri, log)
    fs, path = io.resolve(uri)
    # param_space again: a searcher restored from state saved before it took the space needs it
    tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True, storage_filesystem=fs,
                               param_space=param_space)
    local = getattr(tuner, "_local_tuner", None)
    if local is not None:
        local.get_run_config().callbacks = callbacks
    return tuner


def grid_tuner(spec: SweepSpec, trials: list[Trial], sweep_uri: str, log, tune_uri: str | None = None,
               extra: list = ()):
    """tune_uri: the experiment folder (default <sweep>/tune; a search's later seed rounds use others);
    extra: more Tune callbacks (run_callbacks)."""
    from ray import tune

    from orchestrator.sweep.trainable import sweep_trial

    run_cfgs = {k: v.model_dump(mode="json") for k, v in runs(trials).items()}
    fn = tune.with_parameters(sweep_trial, runs=run_cfgs, sweep_uri=sweep_uri, cpus=spec.resources.cpu,
                              scale=train_workers.scale(spec))
    workers = {k: v.train.workers for k, v in runs(trials).items()}  # (a small closure: Tune pickles it)
    fn = tune.with_resources(fn, train_workers.tune_resources(spec, lambda c: workers[c["trial_id"]],
                                                              multi=max(workers.values(), default=1) > 1))
    # Tune gets the same pyarrow filesystem our own files use, so local paths, file://, s3://
    # (with an endpoint override) and gs:// all behave alike.
    uri = tune_uri or layout.tune_dir(sweep_uri)
    fs, path = io.resolve(uri)
    callbacks = run_callbacks(spec, sweep_uri, extra)
    # a torn save (trial list and generator out of step) is mended first, or dropped (grid_state)
    if tune.Tuner.can_restore(path, storage_filesystem=fs) and grid_state.mend(uri, log):
        return restore(uri, fn, callbacks, log), True
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


def mark_final_errors(grid, sweep_uri: str) -> None:
    """A trial that failed every retry: its error.json becomes final (status 'errored')."""
    for r in grid:
        if r.error is None:
            continue
        tid = r.config.get("trial_id") or os.path.basename(r.path.rstrip("/"))  # search trials: named by Tune
        last_line = (str(r.error).splitlines() or [""])[-1]  # the record when the trial wrote none
        trial_files.mark_error_final(layout.trial_dir(sweep_uri, tid), last_line)
