"""The per-trial compute plan: each layer's attention path, stated before anything runs (dry run)
and recorded after (trial.parquet), and a GPU trial without usable CUDA refused at once."""

import pytest
import torch

from localist import compute
from localist.attention import describe_paths, layer_paths
from localist.config_files import build
from tests.conftest import tiny_tree


def test_layer_paths_by_lambda_mechanism_and_device():
    lams = [0.0, 0.25, 1.0]
    assert layer_paths(lams, "bias", True) == ("sdpa-causal", "flex-soft", "flex-hard")
    assert layer_paths(lams, "bias", False) == ("sdpa-causal", "sdpa-mask", "sdpa-mask")
    assert layer_paths(lams, "penalty", True) == ("sdpa-causal", "explicit", "explicit")
    assert describe_paths(("flex-hard", "sdpa-causal", "flex-soft", "flex-soft")) == \
        "sdpa-causal x1, flex-soft x2, flex-hard x1"


def test_plan_decides_flex_from_device_mechanism_and_dropout():
    cfg = build(tiny_tree(locality={"peak": 1.0, "power": 1}), "t")
    lams = [0.0, 0.5, 1.0]
    assert compute.plan(cfg, "cuda", lams, 0.0).paths == ("sdpa-causal", "flex-soft", "flex-hard")
    gpu_dropout = compute.plan(cfg, "cuda", lams, 0.1)
    assert gpu_dropout.paths == ("sdpa-causal", "sdpa-mask", "sdpa-mask") and "attention dropout 0.1" in gpu_dropout.flex_note
    cpu = compute.plan(cfg, "cpu", lams, 0.0)
    assert not cpu.flex and not cpu.compiled and cpu.precision == "no"  # compile auto: CUDA only
    assert compute.plan(cfg, "cuda", lams, 0.0).compiled
    fallback = compute.plan(cfg, "cuda", lams, 0.0).without_flex("failed: X")
    assert fallback.paths == ("sdpa-causal", "sdpa-mask", "sdpa-mask") and not fallback.uses_flex


def test_gpu_trial_without_cuda_fails_naming_the_build_and_driver(monkeypatch):
    compute.require_cuda([])  # no GPU given: nothing to check
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(compute.NoCudaError) as e:
        compute.require_cuda([0])
    msg = str(e.value)
    assert f"torch {torch.__version__}" in msg and "driver:" in msg and "gpu: 0" in msg


def test_dry_run_states_each_trials_attention_paths(tmp_path):
    from orchestrator.spec import expand, load
    from orchestrator.sweep.dryrun import render

    spec = load("sweeps/paper.yaml")
    text = render(spec, expand(spec))
    assert "attention (cuda)" in text
    assert "sdpa-causal x12" in text  # the baseline
    assert "sdpa-causal x1, flex-soft x10, flex-hard x1" in text  # peak 1: the deepest layer hard
    assert "flex-hard x12" in text  # uniform strict
