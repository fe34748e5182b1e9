"""The trial config's dedup key (TrialConfig.canonical), its corpus check outside the schema, and
the one UserError base of the command line's exit-2 errors."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

import pytest

from localist.config import ConfigError, LocalityConfig, TrialConfig
from localist.errors import UserError
from orchestrator.spec import Trial, check_files, finalise


def _runs(*configs: TrialConfig) -> list[str]:
    """The run each config's trial is given by the sweep's dedup (its own id unless merged)."""
    trials = [Trial(f"t{i}", {}, None, 0, cfg) for i, cfg in enumerate(configs)]
    return [t.run_id for t in finalise(trials, "test")]


def _off(**locality) -> TrialConfig:
    return TrialConfig.model_validate({"locality": {"peak": 0.0, **locality}})


def _another_value(name: str):
    """A valid value of a LocalityConfig field other than its default."""
    field = LocalityConfig.model_fields[name]
    ann, default = field.annotation, field.default
    if get_origin(ann) is Literal:
        return next(v for v in get_args(ann) if v != default)
    if ann is int:
        return default + 1
    if ann is float:
        return default / 2 if default else 0.5
    pytest.fail(f"locality.{name} ({ann}) is new: give this test a valid non-default value for it")


KEPT = [n for n in LocalityConfig.model_fields if n not in LocalityConfig.OFF_NORMALISED]


@pytest.mark.parametrize("name", KEPT)
def test_every_field_not_normalised_keeps_off_trials_apart(name):
    """Iterates the model's fields, so a field added later is covered without touching this test."""
    assert _runs(_off(), _off(**{name: _another_value(name)})) == ["t0", "t1"]


def test_a_field_added_later_keeps_trials_apart():
    """canonical() copies the section: a field it has never heard of survives (the hand-listed
    LocalityConfig(...) it replaced dropped every field it did not name)."""

    class Extended(LocalityConfig):
        new_knob: int = 0

    base = TrialConfig()
    one, two = (base.model_copy(update={"locality": Extended(peak=0.0, new_knob=k)}) for k in (1, 2))
    assert one.canonical().locality.new_knob == 1
    assert two.canonical().locality.new_knob == 2
    assert one.canonical().locality.is_off


def test_normalisations_still_merge_the_off_trials():
    same = [_off(), _off(schedule="uniform"), _off(power=2.0), _off(mechanism="penalty", penalty_weight=3.0),
            _off(schedule="list", lambdas=[0.0, 0.0, 0.0, 0.0]),
            TrialConfig.model_validate({"locality": {"peak": 1.0, "schedule": "list", "lambdas": [0.0] * 4}})]
    assert _runs(*same) == ["t0"] * len(same)
    # the partitioner still decides the measured in-block mass: not merged across it
    assert _runs(_off(), _off(partition="window"), _off(partition="window", window=8)) == ["t0", "t1", "t2"]


def test_trials_with_locality_on_are_not_normalised():
    on = {"peak": 0.5}
    assert _runs(TrialConfig.model_validate({"locality": on}),
                 TrialConfig.model_validate({"locality": {**on, "power": 2.0}}),
                 TrialConfig.model_validate({"locality": {**on, "mechanism": "penalty"}})) == ["t0", "t1", "t2"]
    cfg = TrialConfig.model_validate({"locality": on})
    assert cfg.canonical() is cfg


def test_a_missing_corpus_is_no_schema_error(tmp_path, monkeypatch):
    """The schema accepts any corpus path (a saved sweep is read back from anywhere); running
    it is refused, naming the file, key and trial."""
    monkeypatch.chdir(tmp_path)
    cfg = TrialConfig.model_validate({"data": {"corpus": "no-such.txt"}})
    trial = Trial("c__s1", {"c": "x"}, None, 1, cfg, where="grid.c.x")
    with pytest.raises(ConfigError, match=r"^sweep.yaml: data.corpus: 'no-such.txt' is not a built-in corpus .* "
                                          r"\(in the trial made from grid.c.x, seed 1\)$"):
        check_files([trial], "sweep.yaml")
    (tmp_path / "no-such.txt").write_text("now it exists")
    check_files([trial], "sweep.yaml")


def test_exit_2_errors_share_one_base_and_storage_keeps_3(monkeypatch, capsys):
    from orchestrator import cli
    from orchestrator.sweep.driver import StorageError
    from orchestrator.sweep.lock import SweepLocked

    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(SweepLocked, UserError) and issubclass(StorageError, UserError)
    from orchestrator.analysis.aggregate import AggregateError

    for exc, code in ((ConfigError("bad key"), 2), (SweepLocked("held"), 2), (AggregateError("no results at x"), 2),
                      (StorageError("gone"), 3)):
        def boom(_args, exc=exc):
            raise exc
        monkeypatch.setattr(cli, "_cmd_aggregate", boom)
        assert cli.main(["aggregate", "somewhere"]) == code
        assert capsys.readouterr().err == f"error: {exc}\n"
