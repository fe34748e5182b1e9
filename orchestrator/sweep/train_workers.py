"""Trials of several data-parallel workers (`train.workers` > 1) on Ray Train V2, inside the sweep's Tune trials.

A trial of one worker is what it always was: the Tune function trial trains it in its own process
(trainable.py), with no Ray Train in the path. A trial of N > 1 workers keeps its Tune function
trial as its driver, which builds a TorchTrainer (`fit`): N workers of `resources.cpu` CPUs and
`resources.gpu` GPUs each, placed as `resources.span_nodes` allows. Train's workers form the
torch.distributed process group (gloo on CPUs, NCCL on GPUs) and each runs the trial's
`localist.trainer.Trainer` under Accelerate, which joins that group from the environment Train sets
(`worker`): DDP, each worker its rank's share of every step's global batch, rank 0 alone writing
the trial's files.

- Reports: every worker reports at the same steps (Train waits for all of them) and Ray's
  `TuneReportCallback` hands rank 0's metrics to the Tune trial, so ASHA, searchers, trackers and
  progress.csv see the same metrics as from a single-worker trial (plus `checkpoint_path`).
- Checkpoints are Train checkpoints in the trial's Tune folder (`<tune>/<run_id>/train/`,
  `layout.TRAIN_RUN`): each worker saves its part (rank 0 the model, optimizer, scheduler and
  trainer state, every rank its random state) and Train merges them into one folder. A lost worker:
  Train restarts the worker group from the latest checkpoint (`FailureConfig(max_failures=retries)`),
  each restart a new attempt of the trial. A failed or lost driver: Tune retries the trial (its
  own `retries`), and the new TorchTrainer, of the same name in the same folder, resumes from the
  same checkpoints by step.
- Resources: the Tune trial of a multi-worker trial asks for no CPU and no GPU (`DRIVER`: a little
  memory only), so it never holds what its workers need; Tune cannot see the workers' demand,
  which is why such sweeps get a default `max_concurrent` (driver.py).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

from localist.config import TrialConfig
from orchestrator import layout
from orchestrator.spec import SweepSpec
from orchestrator.sweep import ray_start

PRINT_PATCH = "RAY_TRAIN_ENABLE_PRINT_PATCH"  # passed on to Train's controller and workers
DRIVER = {"cpu": 0, "memory": 512 * 2**20}  # Tune needs some resource; the driver waits on Train, with torch imported


def scale(spec: SweepSpec) -> dict:
    """What a trial's driver needs to start its workers (passed to the Tune trainable)."""
    r = spec.resources
    return {"cpu": r.cpu, "gpu": r.gpu, "span_nodes": r.span_nodes, "retries": spec.retries,
            "keep_checkpoints": spec.keep_checkpoints}


def tune_resources(spec: SweepSpec, workers_of: Callable[[dict], int], multi: bool):
    """Tune's resource request per trial: a single-worker trial its CPUs and GPUs (a plain dict, as
    ever, unless multi: some trial may have more workers), a multi-worker trial only DRIVER.
    workers_of(config) gives a trial's workers from the config Tune passes it."""
    own = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if not multi:
        return own

    def per_trial(config: dict) -> dict:
        return own if workers_of(config) <= 1 else DRIVER

    return per_trial


def most_workers(cfgs) -> int:
    return max((c.train.workers for c in cfgs), default=1)


def per_trial_line(spec: SweepSpec, workers: int) -> str:
    """'4 workers x (8 CPU, 1 GPU) = 4 GPU, 32 CPU per trial' (what one trial of N workers takes)."""
    r = spec.resources
    each = ", ".join(f"{v:g} {k}" for k, v in (("CPU", r.cpu), ("GPU", r.gpu)) if v or k == "CPU")
    if workers == 1:
        return f"{each} per trial"
    total = ", ".join(f"{v * workers:g} {k}" for k, v in (("GPU", r.gpu), ("CPU", r.cpu)) if v)
    return f"{workers} workers x ({each}) = {total} per trial"


def fit(trial_id: str, cfg: TrialConfig, sweep_uri: str, search: bool, scale: dict, run: Callable) -> None:
    """The Tune trial of a multi-worker trial: run its workers on Ray Train and wait for them; each
    worker trains with run (trainable.run: trial_id, config, sweep_uri, cpus, search, send, checkpoint, main)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    storage = tune.get_context().get_storage()  # Tune's own view of the trial's folder (any filesystem)
    # Train's print patch repeats each line a worker prints (as printed, then through its logger)
    os.environ.setdefault(PRINT_PATCH, "0")
    trainer = TorchTrainer(
        functools.partial(worker, run),
        train_loop_config={"trial_id": trial_id, "config": cfg.model_dump(mode="json"), "sweep_uri": sweep_uri,
                           "search": search, "cpus": scale.get("cpu", 1.0), "cwd": os.getcwd()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.workers, use_gpu=scale.get("gpu", 0) > 0,
            resources_per_worker=ray_start.request(scale.get("cpu", 1.0), scale.get("gpu", 0.0)),
            placement_strategy="PACK" if scale.get("span_nodes", True) else "STRICT_PACK"),
        run_config=ray.train.RunConfig(
            name=layout.TRAIN_RUN, storage_path=storage.trial_fs_path, storage_filesystem=storage.storage_filesystem,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=scale.get("retries", 0)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=scale.get("keep_checkpoints", 1))),
    )
    trainer.fit()


def send(values: dict, checkpoint_dir: str | None = None) -> None:
    """A report of this worker; one with a checkpoint returns once Train has registered it, as
    tune.report does: a worker lost soon after would otherwise take its half of the report (still
    in its queue) with it, and the group would restart from the checkpoint before."""
    import ray.train

    if not checkpoint_dir:
        ray.train.report(values)
        return
    ray.train.report(values, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def worker(run: Callable, config: dict) -> None:
    """One Ray Train worker of a trial: the trial's Trainer on this worker's rank, resumed from
    Train's latest checkpoint when the worker group (or the trial) was restarted."""
    import ray.train

    if os.path.isdir(config["cwd"]):  # relative paths in the trial config mean what they mean for the driver
        os.chdir(config["cwd"])
    trial_id = config["trial_id"]
    run(trial_id, TrialConfig.model_validate(config["config"]), config["sweep_uri"], config["cpus"], config["search"],
        send, ray.train.get_checkpoint(), main=ray.train.get_context().get_world_rank() == 0)
