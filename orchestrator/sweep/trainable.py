"""The Ray Tune function trainable: one sweep run inside a Ray worker.

It registers the localist attention (via model building) in the worker process, sets torch
threads to the trial's CPUs, resumes from Tune's checkpoint when retried, and skips work that a
previous driver already finished (its trial.parquet exists), so resumes never redo a trial.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
import traceback

import torch

from localist import compute, trial_files
from localist.config import TrialConfig
from localist.trainer import Preempted, Trainer
from orchestrator import layout
from orchestrator.sweep import preempt


def _report(metrics: dict, checkpoint_dir: str | None = None) -> None:
    from ray import tune

    ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=ckpt)


TRAIN_KEYS = ("train_loss", "lr", "tokens_per_s", "tokens_seen")
EVAL_KEYS = ("eval_loss", "eval_ppl")
LAYER_KEYS = ("entropy_bits", "in_block_mass")


def metrics(step: int, n_layer: int, values: dict, status: str = "running", skipped: int = 0,
            stop_checkpoint: int = 0) -> dict:
    """One Tune report: always the same keys in the same order (Tune's progress.csv takes its columns
    from a trial's first report), NaN where this step has no such number (TensorBoard skips NaN).
    timesteps_total is the training step: TensorBoard and MLflow use it as the x axis.
    stop_checkpoint 1: the report carries the checkpoint a stop request asked for (preempt.Drain waits for it)."""
    keys = TRAIN_KEYS + EVAL_KEYS + tuple(f"layer{i}/{q}" for i in range(n_layer) for q in LAYER_KEYS)
    out = {"step": step, "timesteps_total": step, "status": status, "skipped": skipped,
           preempt.STOP_CHECKPOINT: stop_checkpoint}
    out.update({k: float(values.get(k, math.nan)) for k in keys})
    return out


def sweep_trial(config: dict, runs: dict[str, dict], sweep_uri: str, cpus: float, scale: dict | None = None) -> None:
    """A grid (or confirm) trial: its config is looked up by the trial id Tune passes."""
    trial_id = config["trial_id"]
    _train(trial_id, lambda: TrialConfig.model_validate(runs[trial_id]), sweep_uri, cpus, False, scale)


def search_trial(config: dict, cells: dict[str, dict], seed: int, sweep_uri: str, cpus: float,
                 scale: dict | None = None) -> None:
    """A search trial: its cell's tree plus the values the searcher sampled (dotted keys)."""
    from ray import tune

    from orchestrator.search import CELL_KEY, sampled, with_values

    def build() -> TrialConfig:
        tree = with_values(cells[config[CELL_KEY]], {k: v for k, v in sampled(config).items() if k != CELL_KEY})
        tree["seed"] = seed
        return TrialConfig.model_validate(tree)

    name = tune.get_context().get_trial_name()
    # what was sampled, beside the results: a search continued after a torn save tells its searcher
    trial_files.write_values(layout.trial_dir(sweep_uri, name), sampled(config))
    _train(name, build, sweep_uri, cpus, True, scale)


def _train(trial_id: str, make_config, sweep_uri: str, cpus: float, search: bool, scale: dict | None) -> None:
    """Run one trial into trials/<trial_id>/: in this process, or for a trial of several workers as
    the driver of their Ray Train run (`train_workers.fit`; scale: the sweep's resources).
    In this process a stop request (`preempt`) makes it checkpoint after its current step and hold
    there; a Ray Train run stops as Tune stops it (its workers would have to agree on the step)."""
    from ray import tune

    # Tune runs a trial inside its own trial folder; relative paths in trial configs (a corpus
    # file, a local model) mean the folder the worker started in, as they do for `localist train`.
    if os.environ.get("TUNE_ORIG_WORKING_DIR"):
        os.chdir(os.environ["TUNE_ORIG_WORKING_DIR"])
    out = layout.trial_dir(sweep_uri, trial_id)
    if trial_files.has_result(out):
        row = trial_files.read_result(out)
        _report(metrics(row["final_step"], row["n_layer_actual"], row, row["status"], skipped=1))
        return
    t0 = time.perf_counter()
    cfg = make_config()
    config_s = time.perf_counter() - t0
    if cfg.train.workers > 1:
        from orchestrator.sweep import train_workers

        train_workers.fit(trial_id, cfg, sweep_uri, search, scale or {}, run)
        return
    stop_requested = preempt.Watcher(sweep_uri)  # `sweep stop`, or a signal to the driver
    stop_requested.start()
    try:
        run(trial_id, cfg, sweep_uri, cpus, search, _report, tune.get_checkpoint(), config_s=config_s,
            stop_requested=stop_requested)
    finally:  # a reused worker runs other trials next
        stop_requested.close()


def run(trial_id: str, cfg: TrialConfig, sweep_uri: str, cpus: float, search: bool, send, checkpoint,
        main: bool = True, config_s: float = 0.0, stop_requested=None) -> None:
    """Train one trial in this process (a Tune trial, or one worker of a Ray Train run) and report
    through send(metrics, checkpoint_dir). A grid trial reports at every log and evaluation
    (live metrics); a search trial only at evaluations and checkpoints, each with a finite eval
    loss (what ASHA and the searcher act on). Every report carries the same keys (`metrics`).
    Only the main process (rank 0 of several workers) writes the trial's attempt and error records."""
    import ray

    out = layout.trial_dir(sweep_uri, trial_id)
    torch.set_num_threads(max(1, int(cpus)))
    attempt = trial_files.attempts(out) + int(main)
    node_id = ray.get_runtime_context().get_node_id()
    record = {"attempt": attempt, "time": time.time(), "host": socket.gethostname(), "node_id": node_id,
              "pid": os.getpid(), "from_checkpoint": checkpoint is not None, "start_step": 0}
    if main:
        trial_files.write_attempt(out, attempt, record)
    try:  # given a GPU, a torch without usable CUDA would otherwise train on the CPU without a word
        compute.require_cuda(ray.get_gpu_ids())
    except compute.NoCudaError as e:
        if main:
            trial_files.write_error(out, attempt, str(e), traceback.format_exc())
        raise
    # trial.parquet's extra columns; report_s grows with every report made during fit (the last,
    # after trial.parquet, is not in it)
    extra = {"node_id": node_id, "node_ip": ray.util.get_node_ip_address(), "attempts": attempt,
             "setup_config_s": config_s, "report_s": 0.0}
    trainer = Trainer(cfg, out, trial_id, extra=extra)

    def report(values: dict, checkpoint_dir: str | None = None) -> None:
        t = time.perf_counter()
        send(values, checkpoint_dir)
        extra["report_s"] += time.perf_counter() - t

    trainer.origin = {"sweep": layout.sweep_name(sweep_uri), "sweep_uri": sweep_uri}  # for the model card
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if os.path.exists(os.path.join(d, layout.CHECKPOINT_EMPTIED)):  # a stopped search trial
                print(f"[{trial_id}] its checkpoint was emptied when Tune stopped it: starting from step 0", flush=True)
            else:
                trainer.load_checkpoint(d)
                record["start_step"] = trainer.step
                if main:
                    trial_files.write_attempt(out, attempt, record)

    def last_eval(tr: Trainer) -> float:
        # not step 0's (the starting model's): a searcher acts on what training has reached
        return next((r["loss"] for r in reversed(tr.step_rows) if r["split"] == "eval" and r["step"] > 0), math.nan)

    def on_checkpoint(tr: Trainer) -> None:
        values = dict(tr.metrics)
        if search:
            loss = last_eval(tr)
            if not math.isfinite(loss):
                return  # a searcher needs the metric in every report; no eval yet, so no checkpoint
            values.setdefault("eval_loss", loss)  # (a searcher's metric may be either)
            values.setdefault("eval_ppl", math.exp(loss) if loss < 700 else math.inf)
        with tempfile.TemporaryDirectory() as d:
            tr.save_checkpoint(d)
            if tr.stopping and main:  # before the report: the driver may end this process once Tune has it
                trial_files.write_attempt(out, attempt, {**record, "stopped_at_step": tr.step})
            report(metrics(tr.step, tr.n_layer, values, stop_checkpoint=int(tr.stopping)), d)

    def on_progress(info: dict) -> None:
        trial_files.write_progress(out, {**info, "attempt": attempt})

    def on_eval(tr: Trainer, loss: float) -> None:
        report(metrics(tr.step, tr.n_layer, tr.metrics))

    def on_metrics(values: dict) -> None:
        report(metrics(trainer.step, trainer.n_layer, values))

    try:
        result = trainer.fit(on_checkpoint=on_checkpoint, on_progress=on_progress,
                             on_eval=on_eval if search else None, on_metrics=None if search else on_metrics,
                             stop_requested=stop_requested)
    except Preempted as stopped:  # its checkpoint is with Tune: wait for the driver to end the process
        print(f"[{trial_id}] stop requested: checkpoint at step {stopped.args[0]} saved, waiting for the driver",
              flush=True)
        preempt.hold()
    except Exception as e:
        if main:
            trial_files.write_error(out, attempt, f"{type(e).__name__}: {e}", traceback.format_exc())
        raise
    send(metrics(trainer.step, trainer.n_layer, trainer.metrics, result.status))
