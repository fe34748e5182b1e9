"""Tracker settings, and the MLflow callback on its stores without Ray running (the real sweep's MLflow
and W&B runs are read back in tests/test_sweep.py)."""

import os

import pytest

from orchestrator.spec import Tracking
from orchestrator.sweep import tracking


def test_wandb_is_offline_unless_set_up_here(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking._wandb_mode(None) == "offline"
    assert tracking._wandb_mode("online") == "online"  # the sweep file decides first
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert tracking._wandb_mode(None) == "online"  # `wandb login` was run on this machine
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking._wandb_mode(None) == "disabled"


def test_hints_name_the_sweeps_own_folders():
    spec = Tracking.model_validate({"mlflow": {}})
    lines = tracking.hints(spec, "/data/sweeps/quick")
    assert lines[0] == "[sweep] TensorBoard: tensorboard --logdir /data/sweeps/quick/tune"
    assert lines[1] == "[sweep] MLflow: mlflow ui --backend-store-uri sqlite:////data/sweeps/quick/mlflow.db"
    server = Tracking.model_validate({"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}})
    assert tracking.mlflow_uri(server, "s3://bucket/sweeps/quick") == "http://127.0.0.1:5000"


class _Trial:
    """What Ray's MLflow callback reads of a Tune trial."""

    def __init__(self, name: str, config: dict):
        self.name, self.config = name, config

    def __str__(self) -> str:
        return self.name


def _log_one_trial(spec: Tracking, sweep: str) -> None:
    (cb,) = tracking.callbacks(spec, sweep, "old")
    cb.setup()
    trial = _Trial("peak-1__quintic__s1", {"trial_id": "peak-1__quintic__s1", "locality.peak": 1.0})
    cb.log_trial_start(trial)
    for step, loss in ((6, 5.5), (12, 5.0)):
        cb.log_trial_result(step, trial, {"timesteps_total": step, "eval_loss": loss, "train_loss": float("nan")})
    cb.log_trial_end(trial)


@pytest.mark.parametrize("older", [False, True], ids=["sqlite", "older-file-store"])
def test_mlflow_store_of_a_sweep_new_or_older(tmp_path, monkeypatch, older):
    """A new sweep writes SQLite (mlflow.db); one started before that default, with an mlflow/ file store and
    no mlflow.db, goes on in its file store, which MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true."""
    pytest.importorskip("mlflow")
    import mlflow
    from mlflow.tracking import MlflowClient

    for var in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    sweep = tmp_path / "old"
    sweep.mkdir()
    spec = Tracking.model_validate({"mlflow": {}})
    if older:
        (sweep / "mlflow").mkdir()
    tracking.prepare(spec, str(sweep), "old.yaml")
    uri = tracking.mlflow_uri(spec, str(sweep))
    assert uri == (f"file://{sweep / 'mlflow'}" if older else f"sqlite:///{sweep / 'mlflow.db'}")
    assert os.environ.get("MLFLOW_ALLOW_FILE_STORE") == ("true" if older else None)
    env = "MLFLOW_ALLOW_FILE_STORE=true " if older else ""
    assert tracking.hints(spec, str(sweep))[1] == f"[sweep] MLflow: {env}mlflow ui --backend-store-uri {uri}"
    try:
        _log_one_trial(spec, str(sweep))
    finally:
        mlflow.set_tracking_uri(None)  # Ray's callback set it for this process
    assert (sweep / "mlflow.db").exists() != older
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("old")
    if not older:  # artifacts beside the database, not in ./mlruns of wherever the driver started
        assert experiment.artifact_location == f"file://{sweep / 'mlflow-artifacts'}"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "peak-1__quintic__s1" and run.data.params["locality.peak"] == "1.0"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [(6, 5.5), (12, 5.0)]
    assert "train_loss" not in run.data.metrics  # NaN means "not measured at this step": never logged
