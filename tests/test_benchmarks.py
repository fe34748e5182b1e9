"""The benchmark suite runs end to end in its --quick form and prints its table (times are not
asserted: they depend on the machine), and the GPU script runs in its --dry form on CPU."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks.common import Row


def test_quick_suite_runs_and_prints_the_table():
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
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


def test_gpu_script_dry_run_on_cpu(tmp_path):
    """The GPU check's CPU form: structure (with the host-sync count of an eager step), verify, then
    two variants of Trainer.train_step, each in its own process, the report rewritten after each."""
    from benchmarks import gpu_check

    res = gpu_check.main(["--dry", "--device", "cpu", "--mode", "structure,verify,trainer",
                          "--variants", "vanilla,bias quintic", "--out", str(tmp_path)])
    assert all(r["ok"] for r in res["verify"])
    st = res["structure"]
    assert st["variant"] == "bias quintic" and st["host_syncs"]["count"] == 0
    assert st["attention_paths"] == ["sdpa-causal", "sdpa-mask"]  # CPU: no FlexAttention
    rows = res["trainer"]
    assert [r["variant"] for r in rows] == ["vanilla", "bias quintic"] and not any("error" in r for r in rows)
    assert all(r["tokens_per_s"] > 0 and r["ratio_vs_vanilla"] > 0 and r["recompiles"] == 0 for r in rows)
    assert not any(r["compiled"] for r in rows) and all(r["mfu"] is None for r in rows)  # auto: eager on CPU
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| bias quintic |" in md and "### structure" in md and "### verify" in md
    assert json.loads((tmp_path / "gpu_check.json").read_text())["trainer"][0]["variant"] == "vanilla"
    assert "===== bias quintic seq 64 x batch 2 =====" in (tmp_path / "compile.log").read_text()


def test_gpu_script_dry_run_compiled():
    """--compile: the structure step really compiles (inductor on CPU): one graph, no graph break after
    any of the first steps, nothing compiled again, and the row's own timing."""
    from benchmarks import gpu_check

    res = gpu_check.main(["--dry", "--device", "cpu", "--compile", "--mode", "structure", "--variants", "bias quintic"])
    row = res["structure"]
    assert "error" not in row, row.get("error")
    assert [a["frames"] for a in row["dynamo_after_step"]] == [1, 1, 1]
    assert [a["graph_breaks"] for a in row["dynamo_after_step"]] == [0, 0, 0]
    assert row["compiled"] and row["recompiles"] == 0 and row["tokens_per_s"] > 0 and row["compile_s"] > 0


def test_gpu_script_skips_what_the_budget_cannot_cover():
    from benchmarks import gpu_check

    res = gpu_check.main(["--dry", "--device", "cpu", "--mode", "trainer", "--variants", "vanilla,bias quintic",
                          "--budget", "1"])
    assert not res.get("trainer") and len(res["skipped"]) == 2 and "s left" in res["skipped"][0]


def test_flops_per_token_and_mfu():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from localist import speed

    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=2))
    n = sum(p.numel() for p in model.parameters()) - 64 * 64  # without the position embeddings
    assert speed.flops_per_token(model, 64) == 6 * n + 12 * 2 * 64 * 64
    assert speed.peak_flops(torch.device("cpu")) is None
    assert speed.mfu(1e9, 1e5, speed.peak_flops(torch.device("cpu"), 100.0)) == pytest.approx(1e14 / 1e14)
    assert speed.mfu(1e9, 1e5, None) is None


@pytest.mark.parametrize("value,target,status", [(1.05, "<= 1.10", "met"), (1.2, "<= 1.10", "MISSED"),
                                                 (0.5, "< 1.0", "met"), (0.95, ">= 0.90", "met"),
                                                 (float("nan"), "<= 1.1", "n/a"), (3.0, "", "")])
def test_row_status(value, target, status):
    assert Row("b", "m", value, target=target).status == status


def test_chaos_soak_survives_a_worker_node_kill():
    """benchmarks/chaos.py in its one-kill form (the closing note of issue 20 has a longer run): three
    trials on the loopback cluster, one worker node killed while it trains a trial and replaced; every
    trial completes with the eval loss of the undisturbed sweep."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--trials", "3", "--kills", "1", "--workers", "1",
                           "--steps", "30", "--timeout", "480"], env=env, capture_output=True, text=True, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{proc.stdout.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert result["faults_injected"] == result["faults_survived"] == 1 and result["trials_interrupted"] >= 1
    assert result["trials_completed"] == 3 and result["trials_lost"] == 0 and result["max_abs_eval_loss_diff"] == 0
