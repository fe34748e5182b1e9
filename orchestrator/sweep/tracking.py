"""Experiment tracking chosen in the sweep file, through Ray Tune's own logger callbacks.

    tracking:
      mlflow: {tracking_uri: ..., experiment: ...}   # default: SQLite, <sweep>/mlflow.db
      wandb: {project: ..., mode: offline}           # offline unless W&B is set up on this machine

Tune always writes progress.csv, result.json and TensorBoard event files under <sweep>/tune; these
add runs in MLflow or W&B, one per trial, with the trial's flattened config as parameters. Nothing
is imported unless configured, and a missing package is a ConfigError before Ray starts. Tune runs
these callbacks in the driver, so the default SQLite store has one writer. A sweep started before
the SQLite default keeps its MLflow file store (<sweep>/mlflow) as long as it has no mlflow.db.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

from localist import io
from localist.config import ConfigError
from orchestrator import layout
from orchestrator.spec import Tracking

INSTALL = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the module Ray's callback imports


def prepare(tracking: Tracking, sweep_uri: str, source: str) -> None:
    """Every configured tracker can start (its package is installed, its store is reachable), before
    Ray starts; MLflow 3 refuses its file store (an older sweep's) unless allowed, also for callbacks a
    restore unpickles."""
    for name, module in INSTALL.items():
        if getattr(tracking, name) is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"{source}: tracking.{name}: the {module!r} package is not installed; "
                              f"run: pip install 'localist[{name}]' (or remove tracking.{name})")
    if tracking.mlflow and not tracking.mlflow.tracking_uri and not io.is_local(sweep_uri):
        raise ConfigError(f"{source}: tracking.mlflow.tracking_uri: required when storage is not local "
                          f"({sweep_uri}); give a tracking server, e.g. http://mlflow.example:5000")
    if tracking.mlflow and mlflow_uri(tracking, sweep_uri).startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def mlflow_uri(tracking: Tracking, sweep_uri: str) -> str:
    """The configured tracking URI, else the sweep's own store: SQLite (sqlite:////abs/mlflow.db), or the
    file store of a sweep started before that default (its mlflow/ folder, while it has no mlflow.db)."""
    if tracking.mlflow and tracking.mlflow.tracking_uri:
        return tracking.mlflow.tracking_uri
    db, old = (io.resolve(f(sweep_uri))[1] for f in (layout.mlflow_db, layout.mlflow_dir))
    if os.path.isdir(old) and not os.path.exists(db):
        return "file://" + old
    return "sqlite:///" + db


def _wandb_mode(configured: str | None) -> str:
    """The spec's mode, else WANDB_MODE, else online only where W&B is set up (an API key in the
    environment or a login in ~/.netrc), else offline."""
    if configured or os.environ.get("WANDB_MODE"):
        return configured or os.environ["WANDB_MODE"]
    netrc = os.path.expanduser("~/.netrc")
    logged_in = os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()
    return "online" if os.environ.get("WANDB_API_KEY") or logged_in else "offline"


def _finite(result: dict) -> dict:
    """NaN marks 'not measured at this step' in our reports; trackers should not plot it."""
    return {k: v for k, v in result.items() if not (isinstance(v, float) and math.isnan(v))}


def callbacks(tracking: Tracking, sweep_uri: str, sweep_name: str) -> list:
    """Ray Tune logger callbacks for the configured trackers (imports only those)."""
    out: list[Any] = []
    if tracking.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = mlflow_uri(tracking, sweep_uri)
        default = not tracking.mlflow.tracking_uri and uri.startswith("sqlite:")
        artifacts = "file://" + io.resolve(layout.mlflow_artifacts_dir(sweep_uri))[1] if default else None

        class MLflowCallback(MLflowLoggerCallback):
            def setup(self, *args, **kwargs):
                if artifacts:  # the experiment's artifacts inside the sweep, not in the driver's ./mlruns
                    from mlflow.tracking import MlflowClient

                    client = MlflowClient(self.tracking_uri)
                    if client.get_experiment_by_name(self.experiment_name) is None:
                        client.create_experiment(self.experiment_name, artifact_location=artifacts)
                super().setup(*args, **kwargs)

            def log_trial_result(self, iteration, trial, result):
                super().log_trial_result(iteration, trial, _finite(result))

        out.append(MLflowCallback(tracking_uri=uri, experiment_name=tracking.mlflow.experiment or sweep_name,
                                  tags=dict(tracking.mlflow.tags) or None))
    if tracking.wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

        class WandbLogger(_WandbLoggingActor):
            def run(self):
                super().run()
                # W&B's service shut down now, not by W&B's atexit hook while Ray ends the actor's process
                # (that race printed a ConnectionResetError traceback on the sweep's console)
                self._wandb.teardown()

        class WandbCallback(WandbLoggerCallback):
            _logger_actor_cls = WandbLogger  # the class Ray starts one logging actor of per trial

            def log_trial_result(self, iteration, trial, result):
                # Ray copies each result's trial_id (Tune's own id) into the run's config: keep it the run
                # id, as in the run's name and MLflow's params
                super().log_trial_result(iteration, trial, {**_finite(result), "trial_id": str(trial)})

        w = tracking.wandb
        kw: dict[str, Any] = {"mode": _wandb_mode(w.mode)}
        if kw["mode"] in ("offline", "disabled"):  # Ray's callback asks for an API key unless this is set
            os.environ["WANDB_MODE"] = kw["mode"]
        if w.entity:
            kw["entity"] = w.entity
        if io.is_local(sweep_uri):
            kw["dir"] = io.resolve(layout.wandb_dir(sweep_uri))[1]
            os.makedirs(kw["dir"], exist_ok=True)
        out.append(WandbCallback(project=w.project or sweep_name, group=w.group, **kw))
    return out


def param_space(run_cfgs: dict[str, dict]) -> dict:
    """Tune's param space: one grid value per run, plus that run's flattened config as parameters,
    so params.json, TensorBoard's hparams and the trackers show what each trial is."""
    from ray import tune

    from localist.config import flatten

    flat = {tid: {k: (str(v) if isinstance(v, list) else v) for k, v in flatten(cfg).items()}
            for tid, cfg in run_cfgs.items()}
    keys = list(dict.fromkeys(k for f in flat.values() for k in f))
    space: dict[str, Any] = {"trial_id": tune.grid_search(list(run_cfgs))}
    for k in keys:
        space[k] = tune.sample_from(lambda config, k=k: flat[config["trial_id"]].get(k))
    return space


def hints(tracking: Tracking, sweep_uri: str) -> list[str]:
    """How to look at the sweep's live metrics, for the end of a run."""
    lines = [f"[sweep] TensorBoard: tensorboard --logdir {layout.tune_dir(sweep_uri)}"]
    if tracking.mlflow:
        uri = mlflow_uri(tracking, sweep_uri)
        env = "MLFLOW_ALLOW_FILE_STORE=true " if uri.startswith("file:") else ""
        lines.append(f"[sweep] MLflow: {env}mlflow ui --backend-store-uri {uri}")
    if tracking.wandb and io.is_local(sweep_uri):
        lines.append(f"[sweep] W&B: runs under {layout.wandb_dir(sweep_uri)} (offline ones upload with `wandb sync`)")
    return lines
