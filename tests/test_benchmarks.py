"""The benchmark suite runs end to end in its --quick form and prints its table (times are not
asserted: they depend on the machine), and the GPU script runs in its --dry form on CPU."""

import os
import subprocess
import sys

import pytest

from benchmarks.common import Row


def test_quick_suite_runs_and_prints_the_table():
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert "load average" in out and "benchmark" in out and "status" in out
    for expected in ("train step vanilla SDPA", "train step bias quintic / vanilla",
                     "train step penalty quintic / vanilla", "eval with statistics / plain eval",
                     "later trial: cached load", "rows/s", "bias quintic / vanilla: process peak RSS",
                     "makespan / ideal", "orchestration overhead per trial"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert "FAILED" not in out and "MISSED" not in out  # --quick reports no targets


def test_gpu_script_dry_run_on_cpu():
    from benchmarks import gpu_check

    res = gpu_check.main(["--dry", "--device", "cpu", "--mode", "verify,trainer,throughput"])
    assert all(r["ok"] for r in res["verify"])
    assert [r["variant"] for r in res["trainer"]] == ["vanilla", "bias quintic"]
    names = [r["variant"] for r in res["throughput"]]
    assert names[0] == "vanilla" and "bias window" in names and "bias uniform strict" in names
    assert all(r["tokens_per_s"] > 0 and r["ratio_vs_vanilla"] > 0 for r in res["trainer"] + res["throughput"])


def test_gpu_script_flops_and_lambdas():
    from benchmarks import gpu_check

    assert gpu_check.lambdas("uniform", 3) == [1.0, 1.0, 1.0]
    assert gpu_check.lambdas("quintic", 3) == [0.0, 0.5 ** 5, 1.0]
    model, _ = gpu_check.build(gpu_check.DRY, 64, True, gpu_check.torch.device("cpu"))
    n = sum(p.numel() for p in model.parameters()) - 64 * gpu_check.DRY["n_embd"]
    assert gpu_check.flops_per_token(model, 64) == 6 * n + 12 * 2 * 64 * 64


@pytest.mark.parametrize("value,target,status", [(1.05, "<= 1.10", "met"), (1.2, "<= 1.10", "MISSED"),
                                                 (0.5, "< 1.0", "met"), (0.95, ">= 0.90", "met"),
                                                 (float("nan"), "<= 1.1", "n/a"), (3.0, "", "")])
def test_row_status(value, target, status):
    assert Row("b", "m", value, target=target).status == status
