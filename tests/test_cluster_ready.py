"""Before and around a sweep on a real cluster: trials that fit no node, unreachable addresses,
Ctrl-C, ETAs, the dry run's cost, and the SLURM/Makefile details (issue 11)."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import CLI, env, write_sweep, wait_for


def test_a_trial_that_fits_no_node_exits_2_naming_the_resource(tmp_path):
    f = write_sweep(tmp_path / "gpu.yaml", "gpu", tmp_path / "store", resources={"cpu": 1, "gpu": 1})
    t0 = time.time()
    proc = subprocess.run(CLI + ["sweep", "run", str(f)], env=env(), capture_output=True, text=True, timeout=120)
    took = time.time() - t0
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert took < 60
    err = proc.stderr
    assert "resources: one trial asks for 1 CPU, 1 GPU" in err and "local Ray on this machine" in err
    assert re.search(r"GPU: largest node has 0, cluster total 0", err), err
    assert "CPU:" not in err.split("has that")[1]  # only the missing resource is named
    assert "Tuner.restore" not in proc.stdout + proc.stderr
    assert not list((tmp_path / "store" / "gpu").glob("trials/*/attempts/*.json"))  # no trial started
    # and no saved spec: the same file fixed (gpu: 0) is not "a different sweep named 'gpu'" (issue 20)
    assert not (tmp_path / "store" / "gpu" / "sweep.yaml").exists()


@pytest.mark.parametrize("how", ["RAY_ADDRESS", "--address"])
def test_an_address_that_does_not_answer_exits_2_within_60s(tmp_path, how):
    f = write_sweep(tmp_path / "far.yaml", "far", tmp_path / "store")
    args, extra = (["--address", "127.0.0.1:1"], {}) if how == "--address" else ([], {"RAY_ADDRESS": "127.0.0.1:1"})
    t0 = time.time()
    proc = subprocess.run(CLI + ["sweep", "run", str(f), *args], env=env(**extra), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.time() - t0 < 60
    assert f"the Ray cluster at 127.0.0.1:1 (from {how})" in proc.stderr


def test_ctrl_c_prints_the_resume_command_not_rays(tmp_path):
    f = write_sweep(tmp_path / "stop.yaml", "stop", tmp_path / "store", steps=200, checkpoint_every=20, log_every=5)
    sweep = tmp_path / "store" / "stop"
    proc = subprocess.Popen(CLI + ["sweep", "run", str(f)], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: list(sweep.glob("trials/*/progress.json")), 300, proc), "no trial ever ran"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole foreground group
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode in (130, 1), out[-3000:]
    assert f"localist sweep resume {sweep}" in out
    assert "Tuner.restore" not in out


def test_eta_and_durations():
    from orchestrator.sweep.status import duration, eta_seconds, summary_line

    assert duration(40) == "40s" and duration(725) == "12m 05s" and duration(5 * 3600 + 420) == "5h 07m"
    assert duration(26 * 3600) == "1d 02h" and duration(9 * 86400 + 3600) == "9d 01h"  # no 24 h wrap
    runs = ([{"state": "completed", "wall_s": w, "step": 10, "steps": 10} for w in (3600.0, 3600.0, 36000.0)]
            + [{"state": "running", "wall_s": float("nan"), "step": 5, "steps": 10}]
            + [{"state": "pending", "wall_s": float("nan"), "step": 0, "steps": 10}] * 8)
    df = runs  # the median of finished runs (1 h), not their mean
    # 8 pending + half a running run = 8.5 runs of 1 h on 2 slots
    assert eta_seconds(df, 2) == pytest.approx(8.5 * 3600 / 2)
    assert eta_seconds(df, 100) == pytest.approx(3600)  # more slots than runs: the longest one decides
    assert "ETA 4h 15m (2 at a time)" in summary_line(df, 2)


def test_slots_come_from_the_clusters_nodes():
    from localist.config import ConfigError
    from orchestrator.sweep.ray_start import check_fits, request, slots

    nodes = [{"CPU": 32.0, "GPU": 4.0}, {"CPU": 32.0, "GPU": 4.0}, {"CPU": 8.0}]
    req = request(4, 1)
    check_fits(req, nodes, "test")
    assert slots(req, nodes, None, 99) == 8  # 4 GPUs per node, twice; the CPU-only node runs none
    assert slots(req, nodes, 5, 99) == 5 and slots(req, nodes, None, 3) == 3
    assert slots(request(1, 0.25), nodes, None, 99) == 32  # 4 GPUs / 0.25 per GPU node; none on the CPU node
    with pytest.raises(ConfigError, match=r"asks for 4 CPU, 8 GPU.*GPU: largest node has 4, cluster total 8"):
        check_fits(request(4, 8), nodes, "test")


def test_dry_run_states_time_storage_and_cost_of_the_paper_sweep(capsys):
    from orchestrator.cli import main

    assert main(["sweep", "run", "sweeps/paper.yaml", "--dry-run", "--tokens-per-s", "250000", "--slots", "8"]) == 0
    out = capsys.readouterr().out
    assert "per run: 2,000 steps, 32.8 million tokens, 24.5 PFLOP (6 x 124 million params x tokens)" in out
    assert "total: 99 runs, 3.24 billion training tokens, 2.42 EFLOP" in out
    # 124.4M params x 12 B = 1.49 GB; keep 1 (+1 being written) per trial, 8 at a time
    assert "checkpoints: 1.49 GB each" in out and "= 2.99 GB x 8 at a time = 23.9 GB" in out
    # 32.8M tokens / 250k tokens/s = 131 s per run; 99 runs = 3.6 h; ceil(99/8) = 13 rounds on 8 slots
    assert "2m 11s per run, 3.6 GPU-hours (1 GPU per trial)" in out
    assert "wall time: 28m 24s on 8 slots" in out
    assert "0.00" not in out.split("compute and storage")[1]


def test_dry_run_of_a_tiny_sweep_reads_in_its_own_units(tmp_path, capsys):
    from orchestrator.cli import main

    f = write_sweep(tmp_path / "t.yaml", "t", tmp_path / "store", checkpoint_every=5, save_model=True)
    assert main(["sweep", "run", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out.split("compute and storage")[1]
    assert "per run: 12 steps, 3,072 tokens" in out and "GFLOP" in out and "0.00" not in out
    assert "of saved models (save_model)" in out and "give --tokens-per-s" in out


def test_dry_run_uses_a_recorded_gpu_figure_for_the_same_shape(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    paper = Path("sweeps/paper.yaml").resolve()
    rec = {"info": {"shape": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab": 50257}},
           "trainer": [{"variant": "vanilla", "seq": 512, "batch": 8, "tokens_per_s": 1e6, "compiled": True},
                       {"variant": "bias quintic", "seq": 512, "batch": 8, "tokens_per_s": 9e5, "compiled": False},
                       {"variant": "bias quintic", "seq": 512, "batch": 8, "tokens_per_s": 200000.0, "compiled": True}]}
    (tmp_path / "gpu_check_out").mkdir()
    (tmp_path / "gpu_check_out" / "gpu_check.json").write_text(json.dumps(rec))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "run", str(paper), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # the paper trains compiled on GPUs (train.compile auto): the compiled bias-quintic figure at its seq
    assert "time at 200,000 tokens/s per trial (gpu_check_out/gpu_check.json: bias quintic compiled, seq 512" in out


def test_slurm_gives_every_srun_its_cpus_and_make_clean_keeps_results():
    lines = Path("cluster/slurm.sbatch").read_text().splitlines()
    sruns = [ln for ln in lines if re.match(r"\s*(\S+=\$\()?srun ", ln) or "$(srun " in ln]
    assert len(sruns) == 3
    assert all('--cpus-per-task="$SLURM_CPUS_PER_TASK"' in ln for ln in sruns)
    assert "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK" in lines
    dry = subprocess.run(["make", "-n", "clean"], capture_output=True, text=True, check=True).stdout
    assert "rm -rf" in dry and "results" not in dry
    assert "rm -rf results" in subprocess.run(["make", "-n", "clean-results"], capture_output=True, text=True,
                                              check=True).stdout


def test_a_sweep_saved_before_new_keys_existed_is_still_the_same_sweep():
    import yaml

    from orchestrator.layout import same_sweep, spec_text
    from orchestrator.spec import validate

    spec = validate({"name": "x", "grid": {"c": {"a": {"locality": {"peak": 0.5}}}, "seeds": [1]}}, "t")
    old = yaml.safe_load(spec_text(spec))
    del old["keep_checkpoints"], old["save_model"]
    assert same_sweep(yaml.safe_dump(old), spec)
    assert not same_sweep(yaml.safe_dump({**old, "retries": 9}), spec)


def test_train_save_model_gives_a_folder_that_trains_on(tmp_path, tiny_config):
    """`localist train --save-model`: the folder is a Hugging Face model that a later trial can
    start from (model.name = the folder: from_pretrained plus its own saved tokenizer)."""
    import yaml

    from localist.model import load_localist
    from localist.trainer import Trainer
    from orchestrator.cli import main
    from tests.conftest import tiny_tree

    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_tree(train={"steps": 4, "eval_every": 4})))
    assert main(["train", str(cfg_file), "--out", str(tmp_path / "out"), "--save-model"]) == 0
    folder = tmp_path / "out" / "model"
    model = load_localist(str(folder))
    assert model.config._attn_implementation == "localist" and model.config.n_layer == 3
    again = Trainer(tiny_config(model={"name": str(folder)}, train={"steps": 2, "eval_every": 2}),
                    str(tmp_path / "again"), log=lambda *_: None)
    assert again.data.vocab_size == model.config.vocab_size
    assert again.fit().status == "completed"
