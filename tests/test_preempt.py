"""A stop with notice, the driver's side, without Ray running (orchestrator/sweep/preempt.py): a
signal becomes a request on storage that trials see, Tune is stopped once every running trial has
saved its stop checkpoint or the grace has run out, a second signal stops at once, and outside a
Tune run a signal ends the driver as before. The whole path on a cluster: test_cluster_faults.py."""

import os
import signal
import types

import pytest

from orchestrator.sweep import preempt


@pytest.fixture
def drain(tmp_path):
    """A Drain on a sweep folder, its signal handlers installed, and Tune's own stop stood in for:
    (drain, what it logged, the calls of 'Tune's handler')."""
    said, tune_stops = [], []
    saved = {s: signal.getsignal(s) for s in (*preempt.SIGNALS, signal.SIGUSR1)}
    d = preempt.Drain(str(tmp_path), grace_s=30, log=said.append)
    d.install()
    signal.signal(signal.SIGUSR1, lambda *a: tune_stops.append(a))  # as tune.run does for its fit
    d.callback().setup()
    try:
        yield d, said, tune_stops
    finally:
        d.uninstall()
        for s, h in saved.items():
            signal.signal(s, h)


def saved_sweep(folder):
    """A sweep folder as a driver leaves it before its trials start: its saved spec."""
    from orchestrator import layout, spec
    from tests.helpers import write_sweep

    folder.mkdir()
    f = write_sweep(folder.parent / "s.yaml", folder.name, folder.parent)
    io_path = folder / "sweep.yaml"
    io_path.write_text(layout.spec_text(spec.load(str(f))))
    return folder


class trial(types.SimpleNamespace):
    """What the drain reads of a Tune trial: its id, status, last result and name (str)."""

    def __init__(self, name: str, status: str = "RUNNING"):
        super().__init__(trial_id=name, status=status, last_result={})

    def __str__(self) -> str:
        return self.trial_id


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_stops_tune_once_every_running_trial_saved_its_stop_checkpoint(drain, tmp_path, sig):
    d, said, tune_stops = drain
    callback = d.callback()
    running, pending = trial("a"), trial("b", "PENDING")
    os.kill(os.getpid(), sig)
    assert d.stopping and not (tmp_path / "stop.json").exists()  # the handler only flags it
    callback.on_step_end(iteration=1, trials=[running, pending])
    assert (tmp_path / "stop.json").exists() and preempt.Watcher(str(tmp_path))()  # trials see it at once
    assert said == [f"[sweep] stop requested ({signal.Signals(sig).name} to the driver): every running trial saves "
                    "a checkpoint at its next step; waiting up to 30 s (a second signal stops at once)"]
    callback.on_checkpoint(iteration=2, trials=[running], trial=running, checkpoint=None)  # its checkpoint_every one
    callback.on_step_end(iteration=2, trials=[running, pending])
    assert tune_stops == []
    running.last_result = {preempt.STOP_CHECKPOINT: 1}
    callback.on_checkpoint(iteration=3, trials=[running], trial=running, checkpoint=None)
    callback.on_step_end(iteration=3, trials=[running, pending])
    assert tune_stops == [(signal.SIGUSR1, None)] and said[-1].startswith("[sweep] every running trial saved")
    d.fit_ended()
    d.uninstall()
    assert not (tmp_path / "stop.json").exists()


def test_a_stop_reaches_the_trials_of_a_pretraining_stage_too(drain, tmp_path):
    """The stage's trials watch its own folder (pretrain.ensure relays it): the request is written
    there as well, and removed from there when the driver ends."""
    d, _, _ = drain
    stage = tmp_path / "pretrained" / "abc"
    d.relay(str(stage))
    preempt.request(str(tmp_path), "localist sweep stop (test)")
    d.callback().on_step_end(iteration=1, trials=[trial("pretrain__s0")])
    assert preempt.Watcher(str(stage))() and preempt.requested(str(stage))["by"] == "localist sweep stop (test)"
    d.uninstall()
    assert not (stage / "stop.json").exists() and not (tmp_path / "stop.json").exists()


def test_the_grace_bounds_the_wait_and_a_second_signal_stops_at_once(drain, tmp_path):
    d, said, tune_stops = drain
    d.grace_s = 0
    callback = d.callback()
    preempt.request(str(tmp_path), "localist sweep stop (test)")  # from another shell
    callback.on_step_end(iteration=1, trials=[trial("a"), trial("b")])
    assert said[0].startswith("[sweep] stop requested (localist sweep stop (test))")
    assert said[1].startswith("[sweep] 2 trial(s) did not checkpoint within the 0 s grace (a, b)")
    assert tune_stops == [(signal.SIGUSR1, None)]
    os.kill(os.getpid(), signal.SIGTERM)  # a second signal: Tune's handler again, at once
    assert tune_stops[-1][0] == signal.SIGUSR1 and len(tune_stops) == 2


def test_outside_a_tune_run_a_signal_ends_the_driver_at_once(tmp_path):
    saved = signal.getsignal(signal.SIGTERM)
    d = preempt.Drain(str(tmp_path))
    d.install()
    try:
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.code == 128 + signal.SIGTERM
    finally:
        d.uninstall()
        signal.signal(signal.SIGTERM, saved)


def test_sweep_stop_with_no_driver_running_says_so(tmp_path):
    from tests.helpers import CLI, env

    import subprocess

    saved_sweep(tmp_path / "s")
    proc = subprocess.run(CLI + ["sweep", "stop", str(tmp_path / "s")], env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert f"no driver is running the sweep at {tmp_path / 's'}" in proc.stderr and "sweep resume" in proc.stderr
    assert not (tmp_path / "s" / "stop.json").exists()
    proc = subprocess.run(CLI + ["sweep", "stop", str(tmp_path / "nothing")], env=env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "not a sweep" in proc.stderr


def test_sweep_stop_from_another_shell_asks_the_running_driver(tmp_path):
    """With a driver holding the sweep (its lock taken here), `sweep stop` writes the request the
    driver and its trials watch for; the driver's drain takes it from storage."""
    import subprocess

    from orchestrator.sweep.lock import SweepLock
    from tests.helpers import CLI, env

    sweep = saved_sweep(tmp_path / "s")
    with SweepLock(str(sweep)):
        proc = subprocess.run(CLI + ["sweep", "stop", str(sweep)], env=env(), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"stop requested for the driver of {sweep} (pid {os.getpid()}" in proc.stdout
        assert "localist sweep stop (pid" in preempt.requested(str(sweep))["by"]
        said = []
        d = preempt.Drain(str(sweep), log=said.append)
        d._step([])  # a driver's next look at storage
        assert d.stopping and said[0].startswith("[sweep] stop requested (localist sweep stop (pid")
