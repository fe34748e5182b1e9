"""The pretraining stage (`pretrain:`): keyed by its config, trained once, resumed after a driver is
killed mid-pretraining, reused by a later sweep, and fine-tuned by every trial (step-0 rows included)."""

import copy
import json
import math
import subprocess

import pandas as pd
import pytest
import yaml

from localist.config import ConfigError
from orchestrator import layout, spec as spec_mod
from tests.conftest import TINY
from tests.helpers import CLI, env, held, kill_session, wait_for

PRETRAIN = {"model": {"n_layer": 2, "n_embd": 32, "n_head": 2},
            "data": {"corpus": "pydoc", "max_chars": 60_000, "seq_len": 64, "vocab_size": 512, "eval_sequences": 8},
            "train": {"steps": 12, "batch_size": 4, "lr": 0.003, "warmup_steps": 2, "log_every": 4, "eval_every": 12}}


def sweep_tree(name: str, storage, configurations: dict, pretrain: dict | None = None) -> dict:
    base = {"data": {k: v for k, v in TINY["data"].items() if k != "vocab_size"},
            "train": {**TINY["train"], "steps": 6, "eval_every": 6, "log_every": 3}, "locality": TINY["locality"]}
    return {"name": name, "storage": str(storage), "base": base, "pretrain": copy.deepcopy(pretrain or PRETRAIN),
            "grid": {"configuration": configurations, "seeds": [1]},
            "resources": {"cpu": 1}, "max_concurrent": 2, "retries": 1, "checkpoint_every": 4}


PEAKS = {"peak-0": {"locality": {"peak": 0.0}}, "peak-1": {"locality": {"peak": 1.0}}}


def test_the_key_follows_what_changes_the_base_and_errors_name_the_key(tmp_path):
    def key(**changes):
        tree = sweep_tree("k", tmp_path, PEAKS)
        for path, value in changes.items():
            section, _, name = path.partition("__")
            tree["pretrain"][section][name] = value
        return spec_mod.pretrain_stage(spec_mod.validate(tree, "k.yaml")).key

    first = key()
    assert key() == first  # a content hash: the same config, the same key
    for change in ({"train__steps": 13}, {"data__corpus": "kjv"}, {"model__n_embd": 64}, {"train__lr": 0.001}):
        assert key(**change) != first, change
    for change in ({"train__log_every": 2}, {"train__checkpoint_every": 2}, {"train__eval_every": 6}):
        assert key(**change) == first, change  # cannot change the base's weights
    tree = sweep_tree("k", tmp_path, PEAKS)
    tree["checkpoint_every"] = 3  # the sweep's own checkpoints neither
    assert spec_mod.pretrain_stage(spec_mod.validate(tree, "k.yaml")).key == first

    spec = spec_mod.validate(sweep_tree("k", tmp_path, PEAKS), "k.yaml")
    trials = spec_mod.expand(spec)
    base = spec_mod.pretrain_stage(spec).base(1)
    assert base == str(tmp_path / "pretrained" / first / "trials" / "pretrain__s0" / "model")
    assert base == layout.trial_dir(spec_mod.pretrain_stage(spec).spec.uri, "pretrain__s0") + "/model"
    assert {t.config.model.name for t in trials} == {base}
    assert {(t.config.model.n_layer, t.config.model.n_embd, t.config.data.vocab_size) for t in trials} == {(2, 32, 512)}

    from orchestrator.sweep import dryrun

    shown = dryrun.render(spec, trials)
    assert f"pretrain: base {first} (1 run of 12 steps" in shown and "trained first" in shown
    assert "(6 x 43,008 params x tokens)" in shown  # the base's shape: 12 x 2 x 32^2 + (512 + 64) x 32

    def refused(change: dict, where: str, says: str):
        tree = sweep_tree("k", tmp_path, PEAKS)
        for section, value in change.items():
            tree[section] = {**tree[section], **value}
        with pytest.raises(ConfigError) as e:
            spec_mod.validate(tree, "k.yaml")
        assert f"k.yaml: {where}" in str(e.value) and says in str(e.value), str(e.value)

    refused({"pretrain": {"locality": {"peak": 1.0}}}, "pretrain.locality", "without locality")
    refused({"pretrain": {"train": {"stepz": 3}}}, "pretrain.train.stepz", "not a trial-config key")
    refused({"base": {"model": {"n_layer": 4}}}, "base.model.n_layer", "fine-tunes the pretrained base")
    refused({"base": {"data": {**TINY["data"], "seq_len": 128}}}, "grid.configuration.peak-0: data.seq_len",
            "128 exceeds the pretrained base's context (pretrain.data.seq_len: 64)")


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Sweep A: its driver killed mid-pretraining (the base held at step 9, after its step-8
    checkpoint), then resumed to the end."""
    root = tmp_path_factory.mktemp("pretrain")
    store = root / "store"
    f = root / "a.yaml"
    f.write_text(yaml.safe_dump(sweep_tree("a", store, PEAKS)))
    key = spec_mod.pretrain_stage(spec_mod.load(f)).key
    folder = store / "pretrained" / key
    proc = subprocess.Popen(CLI + ["sweep", "run", str(f)], env=env(**held("pretrain__s0", 9, root / "never")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: (root / "never.held-pretrain__s0").exists(), 240, proc)
    finally:
        kill_session(proc)
    killed = {"grid_started": (store / "a" / "trials").exists(),
              "checkpoints": sorted(p.name for p in folder.glob("tune/pretrain__s0/checkpoint_*"))}
    done = subprocess.run(CLI + ["sweep", "resume", str(store / "a")], env=env(), capture_output=True, text=True,
                          timeout=600, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "store": store, "key": key, "folder": folder, "killed": killed, "log": done.stdout}


def attempts(trial_dir):
    return [json.loads(p.read_text()) for p in sorted((trial_dir / "attempts").glob("*.json"))]


def test_a_driver_killed_mid_pretraining_resumes_it_then_fine_tunes_every_trial_from_it(stage):
    folder, sweep = stage["folder"], stage["store"] / "a"
    assert not stage["killed"]["grid_started"]  # the grid waits for its base
    assert stage["killed"]["checkpoints"]
    pre = folder / "trials" / "pretrain__s0"
    tries = attempts(pre)
    assert len(tries) == 2 and tries[1]["from_checkpoint"] and tries[1]["start_step"] == 8
    base = pd.read_parquet(pre / "trial.parquet").iloc[0]
    assert base.status == "completed" and base.final_step == 12 and base["locality.peak"] == 0.0
    assert base["data.corpus"] == "pydoc" and (pre / "model" / "config.json").exists()
    assert f"[pretrain] base {stage['key']}" in stage["log"]
    trials = pd.read_parquet(sweep / "results" / "trials.parquet")
    assert len(trials) == 2 and (trials.status == "completed").all()
    assert set(trials["model.name"]) == {str(pre / "model")} and set(trials["data.corpus"]) == {"kjv"}
    assert set(trials["n_layer_actual"]) == {2}
    steps = pd.read_parquet(sweep / "results" / "steps.parquet")
    first = steps[(steps.split == "eval") & (steps.step == 0)]
    assert sorted(first.trial_id) == sorted(trials.trial_id)  # a step-0 row for every trial
    assert trials.step0_eval_loss.notna().all() and (trials.step0_eval_loss > trials.eval_loss).all()
    record = json.loads((sweep / "pretrain.json").read_text())
    assert record["key"] == stage["key"] and record["reused"] is False
    assert record["bases"][0]["steps"] == 12 and record["bases"][0]["eval_loss"] == pytest.approx(base.eval_loss)
    prov = json.loads((sweep / "summary" / "provenance.json").read_text())
    assert prov["pretrain"]["key"] == stage["key"]
    report = (sweep / "summary" / "report.html").read_text()
    assert stage["key"] in report and "Zero-shot and fine-tuned" in report


def test_a_second_sweep_naming_the_same_base_reuses_it(stage):
    f = stage["root"] / "b.yaml"
    f.write_text(yaml.safe_dump(sweep_tree("b", stage["store"], {"peak-0.5": {"locality": {"peak": 0.5}}})))
    done = subprocess.run(CLI + ["sweep", "run", str(f), "--no-aggregate"], env=env(), capture_output=True, text=True,
                          timeout=600, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"[pretrain] base {stage['key']}: reusing" in done.stdout
    pre = stage["folder"] / "trials" / "pretrain__s0"
    assert len(attempts(pre)) == 2  # not trained again
    assert json.loads((stage["store"] / "b" / "pretrain.json").read_text())["reused"] is True
    assert [p.name for p in (stage["store"] / "pretrained").iterdir()] == [stage["key"]]


def test_the_base_fine_tunes_by_hand_as_in_the_sweep(stage, tmp_path):
    """`localist train --set model.name=<base>`: the same starting model (its step-0 eval without
    locality is the sweep's peak-0 trial's, to the last bit)."""
    from localist.config_files import build
    from localist.trainer import run_trial

    sweep_row = pd.read_parquet(stage["store"] / "a" / "trials" / "peak-0__s1" / "trial.parquet").iloc[0]
    tree = sweep_tree("x", tmp_path, PEAKS)["base"]
    tree = {**tree, "model": {"name": str(stage["folder"] / "trials" / "pretrain__s0" / "model")},
            "locality": {**tree["locality"], "peak": 0.0}, "seed": 1, "train": {**tree["train"], "steps": 1}}
    res = run_trial(build(tree, "test"), str(tmp_path / "hand"), log=lambda *_: None)
    assert res.status == "completed"
    row = pd.read_parquet(tmp_path / "hand" / "trial.parquet").iloc[0]
    assert math.isclose(row.step0_eval_loss, sweep_row.step0_eval_loss, rel_tol=0, abs_tol=1e-12)
