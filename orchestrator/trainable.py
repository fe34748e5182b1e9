"""The Ray Tune function trainable: one sweep run inside a Ray worker.

It registers the localist attention (via model building) in the worker process, sets torch
threads to the trial's CPUs, resumes from Tune's checkpoint when retried, and skips work that a
previous driver already finished (its trial.parquet exists), so resumes never redo a trial.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
import traceback

import torch

from localist import io
from localist.config import TrialConfig
from localist.trainer import Trainer
from orchestrator import layout


def _report(metrics: dict, checkpoint_dir: str | None = None) -> None:
    from ray import tune

    ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=ckpt)


def _metrics(eval_loss: float, step: int, **extra) -> dict:
    ppl = math.exp(eval_loss) if math.isfinite(eval_loss) and eval_loss < 700 else math.nan
    return {"eval_loss": eval_loss, "eval_ppl": ppl, "step": step, **extra}


def sweep_trial(config: dict, runs: dict[str, dict], sweep_uri: str, cpus: float) -> None:
    """A grid (or confirm) trial: its config is looked up by the trial id Tune passes."""
    trial_id = config["trial_id"]
    _train(trial_id, lambda: TrialConfig.model_validate(runs[trial_id]), sweep_uri, cpus, search=False)


def search_trial(config: dict, cells: dict[str, dict], seed: int, sweep_uri: str, cpus: float) -> None:
    """A search trial: its cell's tree plus the values the searcher sampled (dotted keys)."""
    from ray import tune

    from orchestrator.search import CELL_KEY, with_values

    def build() -> TrialConfig:
        tree = with_values(cells[config[CELL_KEY]], {k: v for k, v in config.items() if "." in k})
        tree["seed"] = seed
        return TrialConfig.model_validate(tree)

    _train(tune.get_context().get_trial_name(), build, sweep_uri, cpus, search=True)


def _train(trial_id: str, make_config, sweep_uri: str, cpus: float, search: bool) -> None:
    """Run one trial into trials/<trial_id>/. A search trial reports its eval loss at every
    evaluation (what ASHA and the searcher act on); every report carries the metric keys."""
    import ray
    from ray import tune

    # Tune runs a trial inside its own trial folder; relative paths in trial configs (a corpus
    # file, a local model) mean the folder the worker started in, as they do for `localist train`.
    if os.environ.get("TUNE_ORIG_WORKING_DIR"):
        os.chdir(os.environ["TUNE_ORIG_WORKING_DIR"])
    out = layout.trial_dir(sweep_uri, trial_id)
    done = io.join(out, "trial.parquet")
    if io.exists(done):
        row = io.read_parquet(done).to_pylist()[0]
        _report(_metrics(row["eval_loss"], row["final_step"], status=row["status"], skipped=1))
        return
    torch.set_num_threads(max(1, int(cpus)))
    cfg = make_config()
    attempt = len(io.listdir(io.join(out, "attempts"))) + 1
    checkpoint = tune.get_checkpoint()
    node_id = ray.get_runtime_context().get_node_id()
    io.write_text(io.join(out, "attempts", f"{attempt:03d}.json"), json.dumps({
        "attempt": attempt, "time": time.time(), "host": socket.gethostname(), "node_id": node_id,
        "pid": os.getpid(), "from_checkpoint": checkpoint is not None}))
    trainer = Trainer(cfg, out, trial_id, extra={"node_id": node_id, "node_ip": ray.util.get_node_ip_address(),
                                                 "attempts": attempt})
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_checkpoint(d)

    def last_eval(tr: Trainer) -> float:
        return next((r["loss"] for r in reversed(tr.step_rows) if r["split"] == "eval"), math.nan)

    def on_checkpoint(tr: Trainer) -> None:
        loss = last_eval(tr)
        if search and not math.isfinite(loss):
            return  # a searcher needs the metric in every report; no eval yet, so no checkpoint
        with tempfile.TemporaryDirectory() as d:
            tr.save_checkpoint(d)
            _report(_metrics(loss if search else math.nan, tr.step, status="running"), d)

    def on_progress(info: dict) -> None:
        io.write_text(io.join(out, "progress.json"), json.dumps({**info, "attempt": attempt}))

    def on_eval(tr: Trainer, loss: float) -> None:
        _report(_metrics(loss, tr.step, status="running"))

    try:
        result = trainer.fit(on_checkpoint=on_checkpoint, on_progress=on_progress,
                             on_eval=on_eval if search else None)
    except Exception as e:
        io.write_text(io.join(out, "error.json"), json.dumps({
            "attempt": attempt, "time": time.time(), "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(), "final": False}))
        raise
    _report(_metrics(result.eval_loss, trainer.step, status=result.status))
