"""Tracker settings that need no tracker installed (the MLflow path runs in tests/test_sweep.py)."""

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
    assert lines[1].endswith("mlflow ui --backend-store-uri file:///data/sweeps/quick/mlflow")
    server = Tracking.model_validate({"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}})
    assert tracking.mlflow_uri(server, "s3://bucket/sweeps/quick") == "http://127.0.0.1:5000"
