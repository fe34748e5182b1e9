"""The Ray Tune function trainable: one sweep run inside a Ray worker.

It registers the localist attention (via model building) in the worker process, sets torch
threads to the trial's CPUs, resumes from Tune's checkpoint when retried, and skips work that a
previous driver already finished (its trial.parquet exists), so resumes never redo a trial.
"""

from __future__ import annotations

import json
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


def sweep_trial(config: dict, runs: dict[str, dict], sweep_uri: str, cpus: float) -> None:
    import ray
    from ray import tune

    # Tune runs a trial inside its own trial folder; relative paths in trial configs (a corpus
    # file, a local model) mean the folder the worker started in, as they do for `localist train`.
    if os.environ.get("TUNE_ORIG_WORKING_DIR"):
        os.chdir(os.environ["TUNE_ORIG_WORKING_DIR"])
    trial_id = config["trial_id"]
    out = layout.trial_dir(sweep_uri, trial_id)
    done = io.join(out, "trial.parquet")
    if io.exists(done):
        row = io.read_parquet(done).to_pylist()[0]
        _report({"status": row["status"], "eval_loss": row["eval_loss"], "step": row["final_step"], "skipped": 1})
        return
    torch.set_num_threads(max(1, int(cpus)))
    cfg = TrialConfig.model_validate(runs[trial_id])
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

    def on_checkpoint(tr: Trainer) -> None:
        with tempfile.TemporaryDirectory() as d:
            tr.save_checkpoint(d)
            _report({"step": tr.step, "status": "running", "eval_loss": float("nan")}, d)

    def on_progress(info: dict) -> None:
        io.write_text(io.join(out, "progress.json"), json.dumps({**info, "attempt": attempt}))

    try:
        result = trainer.fit(on_checkpoint=on_checkpoint, on_progress=on_progress)
    except Exception as e:
        io.write_text(io.join(out, "error.json"), json.dumps({
            "attempt": attempt, "time": time.time(), "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(), "final": False}))
        raise
    _report({"status": result.status, "eval_loss": result.eval_loss, "step": trainer.step})
