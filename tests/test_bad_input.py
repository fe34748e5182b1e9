"""Malformed sweep and trial files: one clear message naming file and key, exit code 2, and
nothing created (no folder, no Ray session)."""

import argparse
import os
import shutil
import subprocess

import pytest

from orchestrator.cli import main

GOOD = {
    "name": "bad",
    "base": "{model: {name: tiny, n_layer: 2, n_embd: 32, n_head: 2}, train: {steps: 2}}",
    "grid": "{configuration: {p0: {locality: {peak: 0}}, p1: {locality: {peak: 1}}}, seeds: [1]}",
}


def sweep_text(**fields) -> str:
    merged = {**GOOD, **fields}
    return "\n".join(f"{k}: {v}" for k, v in merged.items() if v is not None) + "\n"


SWEEPS = [  # (id, file text, substrings the message must contain)
    ("unknown-top-key", sweep_text(max_concurent="2"), ["max_concurent", "did you mean 'max_concurrent'"]),
    ("wrong-type", sweep_text(retries="many"), ["retries", "integer"]),
    ("empty-axis", sweep_text(grid="{schedule: {}, seeds: [1]}"), ["grid.schedule", "at least one preset"]),
    ("duplicate-preset", "name: bad\ngrid:\n  configuration:\n    p0: {locality: {peak: 0}}\n"
     "    p0: {locality: {peak: 1}}\n  seeds: [1]\n", ["duplicate key 'p0'", "line 4"]),
    ("override-not-a-key", sweep_text(grid="{configuration: {p1: {locality: {peek: 1}}}, seeds: [1]}"),
     ["grid.configuration.p1.locality.peek", "did you mean 'locality.peak'"]),
    ("peak-out-of-range", sweep_text(grid="{configuration: {p1: {locality: {peak: 1.5}}}, seeds: [1]}"),
     ["locality.peak", "less than or equal to 1", "grid.configuration.p1"]),
    ("no-seeds", sweep_text(grid="{configuration: {p0: {}}}"), ["grid.seeds", "missing"]),
    ("empty-seeds", sweep_text(grid="{configuration: {p0: {}}, seeds: []}"), ["grid.seeds", "non-empty"]),
    ("duplicate-seeds", sweep_text(grid="{configuration: {p0: {}}, seeds: [1, 1]}"), ["grid.seeds", "duplicate"]),
    ("bad-seed", sweep_text(grid="{configuration: {p0: {}}, seeds: [1, x]}"), ["grid.seeds[1]", "'x'"]),
    ("negative-gpu", sweep_text(resources="{cpu: 1, gpu: -1}"), ["resources.gpu", "greater than or equal to 0"]),
    ("yaml-syntax", "name: bad\ngrid: {configuration: [\n", ["YAML syntax error", "line"]),
    ("missing-corpus", sweep_text(base="{data: {corpus: /no/such/corpus.txt}}"),
     ["data.corpus", "/no/such/corpus.txt"]),
    ("bad-storage-scheme", sweep_text(storage="bogus://bucket/x"), ["storage", "bogus://bucket/x"]),
    ("storage-under-a-file", sweep_text(storage="{tmp}/afile/results"), ["storage", "not writable"]),
    ("name-with-slash", sweep_text(name="a/b"), ["name", "names a folder"]),
    ("preset-with-double-underscore", sweep_text(grid="{configuration: {p__0: {}}, seeds: [1]}"),
     ["grid.configuration.p__0", "without '__'"]),
    ("min-len-over-max-len", sweep_text(base="{locality: {min_len: 40, max_len: 20}}"),
     ["locality.min_len", "exceeds max_len"]),
    ("heads-do-not-divide", sweep_text(base="{model: {n_embd: 30, n_head: 4}}"), ["model.n_embd", "n_head"]),
    ("comparators-not-a-mapping", sweep_text(comparators="[uniform]"), ["comparators", "dictionary"]),
    ("zero-concurrency", sweep_text(max_concurrent="0"), ["max_concurrent", "greater than or equal to 1"]),
    ("bad-schedule-name", sweep_text(base="{locality: {schedule: cubic}}"),
     ["locality.schedule", "'uniform', 'polynomial' or 'list'"]),
    ("top-level-list", "- name: bad\n", ["top level must be a mapping"]),
    ("seeds-at-top-level", sweep_text(seeds="[1, 2]"), ["seeds: unknown key", "did you mean 'grid.seeds'"]),
    ("trial-section-at-top-level", sweep_text(train="{steps: 5}"), ["train: unknown key", "'base.train'"]),
    ("trial-key-at-top-level", sweep_text(warmup_steps="5"), ["did you mean 'base.train.warmup_steps'"]),
    ("paper-schedule-name", sweep_text(base="{locality: {schedule: quintic}}"),
     ["locality.schedule", "(got 'quintic')", "schedule: polynomial, power: 5"]),
    ("tracking-unknown-key", sweep_text(tracking="{mlflow: {trackng_uri: x}}"),
     ["tracking.mlflow.trackng_uri", "unknown key"]),
    ("tracking-unknown-tracker", sweep_text(tracking="{neptune: {}}"), ["tracking.neptune", "unknown key"]),
    ("tracking-mlflow-file-store-on-s3", sweep_text(tracking="{mlflow: {}}",
                                                     storage="\"s3://b/x?region=us-east-1&endpoint_override=127.0.0.1:9\""),
     ["tracking.mlflow.tracking_uri", "required when storage is not local"]),
]


@pytest.fixture
def no_ray():
    import ray

    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized()


@pytest.mark.parametrize("case,text,expected", SWEEPS, ids=[c[0] for c in SWEEPS])
def test_bad_sweep_file(case, text, expected, tmp_path, capsys, no_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    f = tmp_path / f"{case}.yaml"
    f.write_text(text.replace("{tmp}", str(tmp_path)))
    before = sorted(os.listdir(tmp_path))
    code = main(["sweep", "run", str(f)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(f) in err, err
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"
    assert len(err.strip().splitlines()) <= 2, err  # one clear message, not a traceback
    assert sorted(os.listdir(tmp_path)) == before  # nothing written (no results/ folder)


def test_tracking_package_missing(tmp_path, capsys, no_ray, monkeypatch):
    """A configured tracker whose package is absent: exit 2 with the install line, before anything."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "w.yaml"
    f.write_text(sweep_text(tracking="{wandb: {project: p}}"))
    assert main(["sweep", "run", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}: tracking.wandb:" in err and "pip install 'localist[wandb]'" in err
    assert os.listdir(tmp_path) == ["w.yaml"]


TRIALS = [
    ("unknown-key", "train: {stpes: 5}\n", [], ["train.stpes", "did you mean 'train.steps'"]),
    ("negative-power", "", ["locality.power=-1"], ["locality.power", "greater than or equal to 0"]),
    ("seed-not-int", "", ["seed=abc"], ["seed", "valid integer"]),
    ("unknown-set-key", "", ["locality.peek=1"], ["--set", "did you mean 'locality.peak'"]),
    ("peak-out-of-range", "locality: {peak: -0.5}\n", [], ["locality.peak", "greater than or equal to 0"]),
    ("missing-config-file", None, [], ["no such file"]),
    ("key-in-wrong-section", "locality: {steps: 5}\n", [], ["locality.steps", "did you mean 'train.steps'"]),
    ("set-key-without-section", "", ["steps=5"], ["--set: steps", "did you mean 'train.steps'"]),
    ("set-paper-schedule-name", "", ["locality.schedule=Linear"],
     ["--set: locality.schedule", "--set locality.schedule=polynomial --set locality.power=1"]),
    ("set-bad-enum", "", ["train.precision=fp8"], ["--set: train.precision", "'bf16'", "(got 'fp8')"]),
]


@pytest.mark.parametrize("case,text,sets,expected", TRIALS, ids=[c[0] for c in TRIALS])
def test_bad_trial_config(case, text, sets, expected, tmp_path, capsys):
    f = tmp_path / "trial.yaml"
    if text is not None:
        f.write_text(text)
    out = tmp_path / "out"
    args = ["train", str(f), "--out", str(out)] + [x for s in sets for x in ("--set", s)]
    assert main(args) == 2
    err = capsys.readouterr().err
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"
    if text is not None and not sets:
        assert str(f) in err
    assert not out.exists()


def test_dry_run_of_the_paper_grid(capsys):
    assert main(["sweep", "run", "sweeps/paper.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "results: 111 (105 grid cells x seeds + 6 comparator trials)" in out
    assert "runs after dedup: 99 (12 deduplicated" in out
    assert "peak-0__quintic__s3" in out and "peak-0__linear__s3" in out
    assert "uniform-strict__s1" in out and "window__s2" in out
    assert "training tokens" in out
    assert not os.path.exists("results/paper")


def test_sweep_files_in_repo_are_valid():
    from orchestrator.spec import expand, load

    for f in sorted(os.listdir("sweeps")):
        if f.endswith(".yaml"):
            spec = load(f"sweeps/{f}")
            assert expand(spec, f)
    quick = load("sweeps/quick.yaml")
    assert {"peak-0", "peak-1"} <= set(quick.axes["configuration"])
    assert {"linear", "quintic"} <= set(quick.axes["schedule"]) and len(quick.seeds) >= 3
    assert "uniform-strict" in quick.comparators and quick.pretrain is not None  # the paper's regime


def test_set_on_a_sweep_names_set_and_hints_the_schedule(capsys, no_ray):
    code = main(["sweep", "run", "sweeps/quick.yaml", "--set", "locality.schedule=quartic"])
    err = capsys.readouterr().err
    assert code == 2
    assert "sweeps/quick.yaml: --set: locality.schedule" in err
    assert "--set locality.schedule=polynomial --set locality.power=4" in err


def test_submit_with_relative_storage_names_the_storage_option(capsys, no_ray):
    assert main(["submit", "sweeps/quick.yaml"]) == 2  # storage: ./results is relative
    err = capsys.readouterr().err
    assert "sweeps/quick.yaml: storage: './results' is relative" in err and "pass --storage s3://" in err


def test_warmup_not_shorter_than_the_run_is_warned(tmp_path, capsys):
    f = tmp_path / "w.yaml"
    f.write_text(sweep_text(base="{train: {steps: 10, warmup_steps: 10}}"))
    assert main(["sweep", "run", str(f), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "warning: train.warmup_steps (10) is not shorter than train.steps (10)" in err
    assert "(p0__s1 and 1 more)" in err
    f.write_text(sweep_text(base="{train: {steps: 11, warmup_steps: 10}}"))
    assert main(["sweep", "run", str(f), "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_quick_sweep_runs_as_many_trials_as_the_cpus_allow():
    from orchestrator.sweep.status import local_slots as concurrency
    from orchestrator.spec import load

    quick = load("sweeps/quick.yaml")
    assert quick.max_concurrent is None
    cpus = os.cpu_count() or 1
    assert concurrency(quick, 100) == cpus and concurrency(quick, 1) == 1
    assert concurrency(quick.model_copy(update={"max_concurrent": 1}), 100) == 1


def test_version_and_every_option_has_help(capsys):
    from orchestrator.cli import parser

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("localist ")

    def commands(p, path=()):
        yield path, p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, path + (name,))

    seen = 0
    for path, p in commands(parser()):
        for action in p._actions:
            assert action.help, f"localist {' '.join(path)}: {action.dest} has no help line"
        if path:  # every command's help ends with examples
            assert p.epilog and p.epilog.startswith("examples:\n  localist "), path
            seen += 1
    assert seen >= 12  # train, sweep + 4 actions, submit, jobs + 4 actions, aggregate


def test_train_out_refuses_a_finished_result_resumes_an_unfinished_one(tmp_path, capsys, monkeypatch):
    import yaml

    from localist.faults import InjectedFault
    from tests.conftest import tiny_tree

    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump(tiny_tree(train={"steps": 4, "warmup_steps": 4, "eval_every": 4, "log_every": 2,
                                                 "checkpoint_every": 2})))
    out = tmp_path / "out"
    monkeypatch.setenv("LOCALIST_FAULT", f"raise@3:{tmp_path / 'fired'}")
    with pytest.raises(InjectedFault):  # a crash after the step-2 checkpoint: an unfinished folder
        main(["train", str(f), "--out", str(out)])
    assert "warning: train.warmup_steps (4) is not shorter than train.steps (4)" in capsys.readouterr().err
    assert main(["train", str(f), "--out", str(out)]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    finished = (out / "trial.parquet").read_bytes()

    assert main(["train", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: already holds a finished result" in err and "--force" in err and "another folder" in err
    assert (out / "trial.parquet").read_bytes() == finished  # untouched

    assert main(["train", str(f), "--out", str(out), "--force"]) == 0
    assert "resumed" not in capsys.readouterr().out  # a fresh run, not a resume
    assert (out / "trial.parquet").exists() and not (out / "checkpoint").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_names_the_package_when_venv_cannot_work(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "ensurepip.py").write_text("raise ImportError('stripped, as in Debian without python3-venv')\n")
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", f"VENV={venv}", f"{venv}/bin/python"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(fake)}, timeout=60)
    assert proc.returncode != 0
    assert "sudo apt install python3-venv" in proc.stdout, proc.stdout + proc.stderr
    assert not venv.exists()
