"""The sweep console's routing of Ray worker output, without starting Ray (the real sweep's console
is checked in test_sweep.py)."""

import logging

from orchestrator.sweep.console import Console


def batch(pid, *lines, is_err=False, ip="127.0.0.1"):
    return {"pid": pid, "ip": ip, "localhost": "127.0.0.1", "is_err": is_err, "lines": list(lines)}


def test_worker_lines_are_routed_and_ray_handlers_restored(tmp_path, capsys, monkeypatch):
    for var in ("RAY_DEDUP_LOGS", "RAY_AIR_NEW_OUTPUT", "MLFLOW_LOGGING_LEVEL"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    import ray  # noqa: F401 - installs Ray's console handler

    ray_handlers = list(logging.getLogger("ray").handlers)
    levels = [h.level for h in ray_handlers]
    shown = []
    con = Console(str(tmp_path / "sweep"), log=shown.append)
    assert ray_handlers and all(h.level >= logging.WARNING for h in ray_handlers)
    con.attach()
    assert "logs/driver-" in shown[0] and "--verbose" in shown[0]
    con._worker_lines(batch(11, "[peak-1__quintic__s1] step 6/12 loss 6.8", "[data] tokenised kjv",
                            "Checkpoint successfully created at: Checkpoint(path=/x)"))
    con._worker_lines(batch(11, "[RANK 0] Removed shared tensor {'lm_head.weight'} while saving.",
                            "Traceback (most recent call last):", "  File 'x.py', line 1",
                            "ValueError: bad thing", is_err=True, ip="10.0.0.2"))
    con._worker_lines(batch("raylet", "Workers killed due to memory pressure (OOM)"))
    con._worker_lines(batch("autoscaler", "======== Autoscaler status ========", "Node status"))
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[peak-1__quintic__s1] step 6/12 loss 6.8", "[data] tokenised kjv",
                                "(pid=raylet) Workers killed due to memory pressure (OOM)"]
    assert err.splitlines() == ["(pid=11, ip=10.0.0.2) Traceback (most recent call last):",
                                "(pid=11, ip=10.0.0.2) ValueError: bad thing"]
    con.close()
    assert [h.level for h in ray_handlers] == levels and logging.getLogger("ray").handlers == ray_handlers
    logged = next((tmp_path / "sweep" / "logs").glob("driver-*.log")).read_text()
    for line in ("Checkpoint successfully created", "Removed shared tensor", "  File 'x.py', line 1",
                 "[data] tokenised kjv"):
        assert line in logged
    assert "Autoscaler status" not in logged  # a status table every few seconds, not worth keeping


def test_verbose_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    monkeypatch.delenv("RAY_DEDUP_LOGS", raising=False)
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    con = Console(str(tmp_path / "sweep"), verbose=True, log=lambda _: None)
    con.attach()
    con.close()
    assert not (tmp_path / "sweep").exists()
    import os

    assert "RAY_AIR_NEW_OUTPUT" not in os.environ and "MLFLOW_LOGGING_LEVEL" not in os.environ  # as they are


def test_a_large_sweep_keeps_trial_lines_in_the_log(tmp_path, capsys):
    """trial_lines=False (a sweep of more than 64 runs): the sweep's own lines and problems still
    show; each trial's progress and completion lines go to the log file only."""
    con = Console(str(tmp_path / "sweep"), log=lambda _: None, trial_lines=False)
    con.attach()
    con._worker_lines(batch(11, "[peak-1__quintic__s1] step 6/12 loss 6.8", "[data] tokenised kjv",
                            "[peak-1__quintic__s1] completed: eval loss 6.1", "[sweep] 3/1000 runs done",
                            "[peak-1__s9] step 3: loss is nan; stopping (diverged)",
                            "[peak-1__s7] RuntimeError: boom"))
    out, _ = capsys.readouterr()
    con.close()
    assert out.splitlines() == ["[data] tokenised kjv", "[sweep] 3/1000 runs done", "[peak-1__s7] RuntimeError: boom"]
    logged = next((tmp_path / "sweep" / "logs").glob("driver-*.log")).read_text()
    assert "step 6/12" in logged and "completed: eval loss 6.1" in logged
