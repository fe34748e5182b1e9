"""Trials of several data-parallel workers: the sweep keys, the resource check and slots, what Tune
is asked for, the dry run. (The trials themselves, 1 and 2 gloo workers with a killed worker, run
on the two-node loopback cluster: tests/test_cluster.py.)"""

from __future__ import annotations

import pytest

from localist.config import ConfigError
from tests.conftest import tiny_tree


def test_the_check_and_the_slots_count_a_trials_workers_and_where_they_may_go():
    from orchestrator.sweep.ray_start import check_fits, request, slots

    nodes = [{"CPU": 48.0, "GPU": 4.0}, {"CPU": 48.0, "GPU": 4.0}, {"CPU": 8.0}]
    worker = request(8, 1)
    check_fits(worker, nodes, "test", workers=4, span_nodes=False)  # a 4-GPU node holds one trial
    assert slots(worker, nodes, None, 99, workers=4, span_nodes=False) == 2
    check_fits(worker, nodes, "test", workers=8)  # 8 GPUs: only across both nodes
    assert slots(worker, nodes, None, 99, workers=8) == 1 and slots(worker, nodes, None, 99, workers=3) == 2
    assert slots(worker, nodes, None, 99, workers=3, span_nodes=False) == 2  # 1 GPU of each node idle
    with pytest.raises(ConfigError, match=r"a trial of 8 workers asks for 64 CPU, 8 GPU on one node \(span_nodes: "
                                          r"false\), but the largest node of test holds 4 such worker\(s\) \(the "
                                          r"cluster has room for them across nodes\).*span_nodes: true"):
        check_fits(worker, nodes, "test", workers=8, span_nodes=False)
    with pytest.raises(ConfigError, match=r"a trial of 12 workers asks for 96 CPU, 12 GPU, but all 3 node\(s\) of "
                                          r"test together hold 8 such worker\(s\) at once \(CPU: cluster total 104; "
                                          r"GPU: cluster total 8\)"):
        check_fits(worker, nodes, "test", workers=12)
    with pytest.raises(ConfigError, match=r"one of a trial's 2 workers asks for 64 CPU, 1 GPU, but no node"):
        check_fits(request(64, 1), nodes, "test", workers=2)


def test_workers_come_from_resources_unless_a_trial_names_its_own(tmp_path):
    from orchestrator.spec import expand, validate
    from orchestrator.sweep import driver
    from orchestrator.sweep.train_workers import DRIVER, tune_resources

    raw = {"name": "w", "storage": str(tmp_path), "base": tiny_tree(),
           "grid": {"scale": {"default": {}, "one": {"train": {"workers": 1, "batch_size": 8}}}, "seeds": [1]},
           "resources": {"workers": 2, "cpu": 1}}
    trials = {t.trial_id: t.config.train for t in expand(validate(raw, "w.yaml"))}
    assert trials["default__s1"].workers == 2 and trials["one__s1"].workers == 1
    assert trials["default__s1"].global_batch == trials["one__s1"].global_batch == 8
    raw["resources"]["gpu"] = 0.5  # two DDP ranks cannot share a GPU
    with pytest.raises(ConfigError, match=r"w.yaml: resources.gpu: 0.5 GPU per worker, but the trial made from "
                                          r"grid.scale.default has 2 workers"):
        expand(validate(raw, "w.yaml"), "w.yaml")

    spec = validate({**raw, "resources": {"workers": 2, "cpu": 1, "gpu": 1}}, "w.yaml")
    per_trial = tune_resources(spec, lambda c: trials[c["trial_id"]].workers, multi=True)
    assert per_trial({"trial_id": "default__s1"}) == DRIVER and DRIVER["cpu"] == 0 and "gpu" not in DRIVER
    assert per_trial({"trial_id": "one__s1"}) == {"cpu": 1, "gpu": 1}
    assert tune_resources(spec, None, multi=False) == {"cpu": 1, "gpu": 1}  # single-worker sweeps: as before

    # Tune sees only the drivers of multi-worker trials: max_concurrent defaults to the slots
    lines = []
    assert driver.tune_spec(spec, expand(spec), 3, lines.append).max_concurrent == 3 and lines
    assert driver.tune_spec(spec.model_copy(update={"max_concurrent": 5}), expand(spec), 3, print).max_concurrent == 5
    one = validate({**raw, "resources": {"cpu": 1}, "grid": {"scale": {"a": {}}, "seeds": [1]}}, "w.yaml")
    assert driver.tune_spec(one, expand(one), 3, print).max_concurrent is None


def test_a_trainer_refuses_a_process_count_other_than_its_workers(tiny_config, tmp_path):
    from localist.trainer import Trainer

    with pytest.raises(ConfigError, match=r"train.workers is 2 but 1 process\(es\) run this trial.*--nproc"):
        Trainer(tiny_config(train={"workers": 2}), str(tmp_path / "t"), log=lambda *_: None)


def test_dry_run_states_gpus_per_trial_and_the_global_batch(capsys):
    from orchestrator.cli import main

    assert main(["sweep", "run", "sweeps/gpt2-medium-dp.yaml", "--dry-run", "--tokens-per-s", "60000"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("trial_id"))
    assert header.split()[6:9] == ["workers", "gpus", "global_batch"]
    row = next(line for line in out.splitlines() if line.lstrip().startswith("peak-1__quintic__s1")).split()
    assert row[5:8] == ["4", "4", "32"]
    assert "resources: 4 workers x (8 CPU, 1 GPU) = 4 GPU, 32 CPU per trial (Ray Train; workers on one node)" in out
    assert "global batch: 32 sequences = 32,768 tokens per step (batch_size 8 x grad_accum 1 x 4 workers)" in out
    assert "per run: 1,000 steps, 32.8 million tokens" in out  # 1,000 x 32 x 1,024
    # 32.8M tokens / (4 x 60k tokens/s) = 137 s per run; x 4 GPUs x 14 runs = 2.1 GPU-hours
    assert "60,000 tokens/s per worker (a trial of N workers: N times as fast)" in out
    assert "2m 17s per run, 2.1 GPU-hours (4 GPU per trial)" in out and "on 8 slots (32 GPUs)" in out
