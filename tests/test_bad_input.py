"""Malformed sweep and trial files: one clear message naming file and key, exit code 2, and
nothing created (no folder, no Ray session)."""

import os

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


TRIALS = [
    ("unknown-key", "train: {stpes: 5}\n", [], ["train.stpes", "did you mean 'train.steps'"]),
    ("negative-power", "", ["locality.power=-1"], ["locality.power", "greater than or equal to 0"]),
    ("seed-not-int", "", ["seed=abc"], ["seed", "valid integer"]),
    ("unknown-set-key", "", ["locality.peek=1"], ["--set", "did you mean 'locality.peak'"]),
    ("peak-out-of-range", "locality: {peak: -0.5}\n", [], ["locality.peak", "greater than or equal to 0"]),
    ("missing-config-file", None, [], ["no such file"]),
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
    assert {"peak-0", "peak-0.5", "peak-1"} <= set(quick.axes["configuration"])
    assert {"linear", "quintic"} <= set(quick.axes["schedule"]) and len(quick.seeds) >= 2
    assert "uniform-strict" in quick.comparators
