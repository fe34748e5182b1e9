"""Real Ray Tune sweeps at tiny scale (local Ray on loopback, 2 CPUs): consolidated results row
by row, dedup, status, idempotent collect, and a driver killed mid-sweep then resumed."""

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from localist.data import _kjv
from localist.trainer import checkpoint_step
from orchestrator.sweep import status
from orchestrator.cli import main
from tests.helpers import CLI, attempts, env, held, kill_session, progress_step, tensorboard_scalars, wait_for, \
    wandb_runs, write_sweep

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    corpus = root / "corpus.txt"  # a corpus file given by a path relative to where the user is
    corpus.write_text(_kjv()[:150_000])
    write_sweep(root / "tiny.yaml", "tiny", Path("store"), base_data={"corpus": "corpus.txt"},
                description="a tiny real sweep of the tests", save_model=True,
                checkpoint_every=6,  # a checkpoint makes Ray and Accelerate print their routine lines; keep 1,
                                     # removed when each run completes
                tracking={"mlflow": {}, "wandb": {"mode": "offline"}})  # MLflow's default: SQLite in the sweep
    wandb_home = {f"WANDB_{k}_DIR": str(root / "wandb-home" / k.lower()) for k in ("CONFIG", "CACHE", "DATA")}
    proc = subprocess.run(CLI + ["sweep", "run", "tiny.yaml"], env=env(**wandb_home), capture_output=True, text=True,
                          timeout=400, cwd=root)  # relative storage and corpus, as in sweeps/quick.yaml
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "store" / "tiny", proc.stdout + proc.stderr


def test_completed_runs_keep_no_checkpoints_and_saved_models_reproduce_eval_loss(finished, monkeypatch):
    from huggingface_hub import ModelCard

    from localist.config import TrialConfig
    from localist.model import load_localist
    from localist.trainer import Trainer
    from transformers import AutoTokenizer

    sweep, _ = finished
    runs = sorted(p.name for p in (sweep / "trials").iterdir())
    tune_trials = [d for d in (sweep / "tune").iterdir() if d.name in runs]
    assert len(tune_trials) == len(runs) == 4  # Tune kept its trial folders ...
    assert not list((sweep / "tune").rglob("checkpoint_*"))  # ... but no checkpoint of a completed run
    assert list((sweep / "tune").glob("experiment_state*.json"))  # its own state stays (resume needs it)
    monkeypatch.chdir(sweep.parent.parent)  # the sweep's relative corpus path
    for run in ("peak-1__quintic__s1", "peak-0__linear__s1"):
        folder = sweep / "trials" / run / "model"
        meta = json.loads((folder / "localist_trial.json").read_text())
        cfg = TrialConfig.model_validate(meta["config"])
        assert meta["step"] == cfg.train.steps == 12
        trainer = Trainer(cfg, str(sweep / "scratch"), run, log=lambda *_: None)  # its eval data and locality
        assert trainer.lambdas == meta["lambdas"]
        want = pd.read_parquet(sweep / "trials" / run / "trial.parquet").eval_loss.iloc[0]
        assert abs(trainer.evaluate() - want) > 0.1  # an untrained model of that config: far off
        trainer.model = load_localist(str(folder))
        assert trainer.evaluate() == pytest.approx(want, abs=1e-5)
        text = "In the beginning God created the heaven and the earth."
        assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == trainer.data.tokenizer.encode(text).ids
        card = ModelCard.load(folder / "README.md")  # the model card names the sweep and run it came from
        assert f"sweep `tiny`, run `{run}` (folder `{sweep}`)" in card.text
        assert {r.metric_type: r.metric_value for r in card.data.eval_results}["loss"] == pytest.approx(want, abs=1e-6)


def test_consolidated_results_row_by_row(finished):
    sweep, log = finished
    trials = pd.read_parquet(sweep / "results" / "trials.parquet")
    expected = {  # trial_id -> (run that produced it, configuration, schedule, comparator)
        "peak-0__linear__s1": ("peak-0__linear__s1", "peak-0", "linear", None),
        "peak-0__quintic__s1": ("peak-0__linear__s1", "peak-0", "quintic", None),
        "peak-1__linear__s1": ("peak-1__linear__s1", "peak-1", "linear", None),
        "peak-1__quintic__s1": ("peak-1__quintic__s1", "peak-1", "quintic", None),
        "uniform-strict__s1": ("uniform-strict__s1", None, None, "uniform-strict"),
    }
    assert sorted(trials.trial_id) == sorted(expected)
    assert sorted(p.name for p in (sweep / "trials").iterdir()) == sorted(set(v[0] for v in expected.values()))
    for _, row in trials.iterrows():
        run, conf, sched, comp = expected[row.trial_id]
        assert row.run_trial_id == run and row.deduplicated == (run != row.trial_id)
        coords = tuple(None if pd.isna(x) else x for x in (row.configuration, row.schedule, row.comparator))
        assert coords == (conf, sched, comp)
        assert row.seed == 1 and row.status == "completed"
        assert row.node_ip == "127.0.0.1"  # the local Ray listens on loopback only
        own = pd.read_parquet(sweep / "trials" / run / "trial.parquet").iloc[0]
        assert row.eval_loss == own.eval_loss and row.node_id == own.node_id and row.train_tokens == 12 * 4 * 64
        assert row["locality.peak"] == own["locality.peak"]
    lam = trials.set_index("trial_id")["lambdas"]
    assert json.loads(lam["uniform-strict__s1"]) == [1.0, 1.0, 1.0]
    assert json.loads(lam["peak-1__quintic__s1"])[-1] == 1.0
    steps = pd.read_parquet(sweep / "results" / "steps.parquet")
    layers = pd.read_parquet(sweep / "results" / "layers.parquet")
    for tid, (run, *_) in expected.items():
        own = pd.read_parquet(sweep / "trials" / run / "steps.parquet")
        mine = steps[steps.trial_id == tid]
        assert len(mine) == len(own) and (mine.run_trial_id == run).all()
        assert mine.loss.tolist() == own.loss.tolist()
        assert len(layers[layers.trial_id == tid]) == 3 * 3  # 3 layers x 3 evaluations (steps 0, 6, 12)
    # one trial start per run, nothing retried
    assert set(attempts(sweep).values()) == {1}


ROUTINE = ["Removed shared tensor", "Checkpoint successfully created at", "RAY_DEDUP_LOGS", "repeated",
           "Started a local Ray instance", "Configuration for experiment", "View detailed results here",
           "To visualize your results", "Wrote the latest version of all result files", "Trial status",
           "Creating initial MLflow database tables"]


def test_console_has_trial_progress_and_no_routine_ray_or_accelerate_lines(finished):
    sweep, console = finished
    assert "[peak-1__quintic__s1] step 12/12" in console and "[uniform-strict__s1] completed" in console
    assert "[sweep] report:" in console
    for routine in ROUTINE:
        assert routine not in console, routine
    assert not [x for x in console.splitlines() if x.startswith("(")]  # no raw "(pid=...)" worker line
    logs = list((sweep / "logs").glob("driver-*.log"))  # ... they are all here instead
    assert len(logs) == 1 and f"logs/{logs[0].name} (--verbose prints them here)" in console
    kept = logs[0].read_text()
    for routine in ("Removed shared tensor", "Checkpoint successfully created at", "Started a local Ray instance",
                    "[peak-1__quintic__s1] step 12/12"):
        assert routine in kept, routine


RUNS = ["peak-0__linear__s1", "peak-1__linear__s1", "peak-1__quintic__s1", "uniform-strict__s1"]


def test_live_metrics_in_tune_tensorboard_and_mlflow(finished, monkeypatch):
    """Every log and eval reached Tune (progress.csv, TensorBoard files in the sweep's tune/ folder,
    hparams = the flattened config) and MLflow (one run per trial, config as params)."""
    sweep, log = finished
    tune_dir = sweep / "tune"
    assert f"tensorboard --logdir {tune_dir}" in log and "To visualize your results" not in log
    for run in RUNS:
        progress = pd.read_csv(tune_dir / run / "progress.csv")
        assert progress.step.tolist() == [6, 12]  # log_every = eval_every = 6 of 12 steps
        assert progress.eval_loss.notna().all() and progress.train_loss.notna().all()
        assert {"lr", "tokens_per_s", "tokens_seen", "layer2/in_block_mass", "layer0/entropy_bits"} <= set(progress)
        params = json.loads((tune_dir / run / "params.json").read_text())
        assert params["trial_id"] == run and params["model.n_layer"] == 3
        own = pd.read_parquet(sweep / "trials" / run / "steps.parquet")
        evals = own[(own.split == "eval") & (own.step > 0)]  # step 0's, before training, is not reported to Tune
        scalars = tensorboard_scalars(tune_dir / run)
        assert [s for s, _ in scalars["ray/tune/eval_loss"]] == evals.step.tolist() == [6, 12]
        assert [v for _, v in scalars["ray/tune/eval_loss"]] == pytest.approx(evals.loss.tolist(), rel=1e-6)
    # MLflow: the store the console names, read as printed by a plain client, no environment variable set
    printed = re.search(r"\[sweep\] MLflow: (.*)", log).group(1)
    assert printed == f"mlflow ui --backend-store-uri sqlite:///{sweep / 'mlflow.db'}"
    for var in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=printed.split()[-1])
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.artifact_location == f"file://{sweep / 'mlflow-artifacts'}"  # inside the sweep
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == RUNS
    assert not (sweep / "mlflow").exists() and not (sweep.parent.parent / "mlruns").exists()
    for r in runs:
        cfg = yaml.safe_load((sweep / "sweep.yaml").read_text())
        assert r.data.params["trial_id"] == r.info.run_name and r.data.params["data.seq_len"] == "64"
        assert r.data.params["locality.peak"] == ("0.0" if r.info.run_name.startswith("peak-0") else "1.0")
        assert r.data.params["train.steps"] == str(cfg["base"]["train"]["steps"])
        history = client.get_metric_history(r.info.run_id, "eval_loss")
        assert [m.step for m in history] == [6, 12]
        own = pd.read_parquet(sweep / "trials" / r.info.run_name / "trial.parquet").iloc[0]
        assert history[-1].value == pytest.approx(own.eval_loss)


def test_wandb_offline_runs_hold_each_trials_config_and_eval_history(finished):
    """tracking: {wandb: {mode: offline}}: one W&B run per trial in <sweep>/wandb, read back from its
    run file (nothing was sent anywhere)."""
    sweep, log = finished
    assert f"[sweep] W&B: runs under {sweep / 'wandb'}" in log
    runs = wandb_runs(sweep / "wandb")
    assert sorted(r["name"] for r in runs) == RUNS
    for r in runs:
        assert r["project"] == "tiny" and r["config"]["trial_id"] == r["name"]
        assert r["config"]["data.seq_len"] == 64 and r["config"]["train.steps"] == 12
        assert r["config"]["locality.peak"] == (0.0 if r["name"].startswith("peak-0") else 1.0)
        evals = [(h["timesteps_total"], h["eval_loss"]) for h in r["history"] if "eval_loss" in h]
        own = pd.read_parquet(sweep / "trials" / r["name"] / "steps.parquet")
        own = own[(own.split == "eval") & (own.step > 0)]
        assert [s for s, _ in evals] == own.step.tolist() == [6, 12]
        assert [v for _, v in evals] == pytest.approx(own.loss.tolist(), rel=1e-6)


def test_watch_table_and_partial_aggregate(finished, capsys):
    """`sweep watch` renders every run; a sweep with an unfinished run aggregates as partial."""
    import shutil

    from rich.console import Console

    from orchestrator import layout
    from orchestrator.sweep import watch
    from orchestrator.spec import expand, load_saved

    sweep, _ = finished
    rows = status.run_states(str(sweep), expand(load_saved(str(sweep)), str(sweep)))
    running = rows[0] | {"run_id": "zz-running", "state": "running", "step": 7, "loss": 6.5,
                                       "eval_loss": 6.61, "eval_step": 6, "tokens_per_s": 4321.0, "eta_s": 65.0}
    pending = rows[0] | {"run_id": "aa-pending", "state": "pending", "step": 0, "eval_step": 0,
                                       "eval_loss": float("nan"), "loss": float("nan"), "tokens_per_s": float("nan")}
    frame = rows + [running, pending]
    console = Console(record=True, width=80)  # a plain terminal: nothing is cut
    console.print(watch.render(frame, "tiny", 2))
    lines = console.export_text().splitlines()
    assert "4/6 runs done | 1 running | 1 pending" in lines[0]
    shown = [line for line in lines if line.split() and line.split()[0].endswith(("__s1", "-running", "-pending"))]
    assert [r.split()[0] for r in shown][:2] == ["zz-running", "aa-pending"]  # running first
    assert shown[0].split()[1:] == ["running", "7/12", "6.500", "6.610", "6", "4,321", "1m", "05s"]
    finished_row = next(r for r in shown if "peak-1__quintic__s1" in r)
    own = pd.read_parquet(sweep / "trials" / "peak-1__quintic__s1" / "trial.parquet").iloc[0]
    assert finished_row.split()[1:3] == ["completed", "12/12"] and f"{own.eval_loss:.3f}" in finished_row
    assert main(["sweep", "watch", str(sweep)]) == 0  # a finished sweep: one table, no waiting
    assert "peak-0__linear__s1" in capsys.readouterr().out

    copy = sweep.parent / "tiny-partial"
    shutil.copytree(sweep, copy)
    shutil.rmtree(copy / "results")
    (copy / "trials" / "peak-1__quintic__s1" / "trial.parquet").unlink()  # as while it runs
    assert main(["aggregate", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "PARTIAL RESULTS: 3 of 4 runs finished (1 running, 0 pending)" in out
    assert "PARTIAL RESULTS" in (copy / "summary" / "report.html").read_text()
    trials = pd.read_parquet(copy / "results" / "trials.parquet").set_index("trial_id")
    assert trials.loc["peak-1__quintic__s1", "status"] == "missing"


def test_status_and_collect_are_repeatable(finished):
    sweep, _ = finished
    # `sweep status` stays light (well under 2 s): no torch, pandas, Ray or transformers imported
    light = ("import sys; from orchestrator.cli import main; rc = main(['sweep', 'status', sys.argv[1]]); "
             "print('heavy:', sorted({'torch', 'pandas', 'ray', 'transformers'} & set(sys.modules))); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", light, str(sweep)], env=env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "4/4 runs done" in out.stdout and "peak-0__linear__s1" in out.stdout and "completed" in out.stdout
    assert "driver: none running (last run by pid" in out.stdout
    assert "heavy: []" in out.stdout
    before = pd.read_parquet(sweep / "results" / "trials.parquet")
    again = subprocess.run(CLI + ["sweep", "collect", str(sweep), "--no-aggregate"], env=env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(before, pd.read_parquet(sweep / "results" / "trials.parquet"))


def test_rerun_of_a_finished_sweep_runs_nothing(finished, tmp_path):
    sweep, _ = finished
    spec = yaml.safe_load((sweep / "sweep.yaml").read_text())
    f = tmp_path / "again.yaml"
    f.write_text(yaml.safe_dump(spec))
    proc = subprocess.run(CLI + ["sweep", "run", str(f), "--no-aggregate"], env=env(), capture_output=True,
                          text=True, timeout=300, cwd=sweep.parent.parent)  # where its relative paths hold
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "continuing it" in proc.stdout
    assert set(attempts(sweep).values()) == {1}


def test_driver_killed_mid_sweep_then_resumed(tmp_path):
    f = write_sweep(tmp_path / "crash.yaml", "crash", tmp_path / "store", steps=100, checkpoint_every=10,
                    log_every=5, eval_every=20)
    sweep = tmp_path / "store" / "crash"
    held_run = "uniform-strict__s1"  # started after the first two runs, held at step 45 until the kill
    proc = subprocess.Popen(CLI + ["sweep", "run", str(f)], env=env(**held(held_run, 46, tmp_path / "never")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def mid_sweep():
            done = list(sweep.glob("trials/*/trial.parquet"))
            return len(done) >= 1 and progress_step(sweep, held_run) == 45 and mid_run_eval_in_status()

        def mid_run_eval_in_status():
            """`sweep status` now shows a running trial's latest eval loss (from its partial steps.parquet)."""
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert main(["sweep", "status", str(sweep)]) == 0
            rows = [line.split() for line in buf.getvalue().splitlines()[2:]]
            live = [r for r in rows if r[2] == "running" and r[5] != "NaN"]  # run, cells, state, step, steps, eval_loss
            if live:
                shown.append(live[0])
            return bool(live)

        shown = []
        assert wait_for(mid_sweep, 300, proc), "the sweep never reached the middle"
        run, _, _, step, steps, eval_loss, eval_step = shown[0][:7]
        assert 20 <= int(eval_step) <= int(step) < int(steps) == 100 and float(eval_loss) > 0
        partial = pd.read_parquet(sweep / "trials" / run / "steps.parquet")
        evals = partial[partial.split == "eval"].set_index("step").loss
        assert float(eval_loss) == pytest.approx(evals[int(eval_step)], abs=0.01)
    finally:
        kill_session(proc)
    finished_before = {p.parent.name for p in (sweep / "trials").glob("*/trial.parquet")}
    assert 1 <= len(finished_before) < 4
    assert not (sweep / "results").exists()
    # the step of each interrupted trial's newest whole checkpoint on storage (None: none there)
    saved = {d.name: max((s for c in (sweep / "tune" / d.name).glob("checkpoint_*")
                          if (s := checkpoint_step(str(c))) is not None), default=None)
             for d in (sweep / "trials").iterdir() if d.name not in finished_before}

    proc = subprocess.run(CLI + ["sweep", "resume", str(sweep)], env=env(), capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_parquet(sweep / "results" / "trials.parquet")
    assert sorted(trials.trial_id) == sorted(set(trials.trial_id)) and len(trials) == 5
    assert (trials.status == "completed").all()
    starts = attempts(sweep)
    assert all(starts[t] == 1 for t in finished_before)  # finished trials were not run again
    assert sum(starts.values()) <= 4 + (4 - len(finished_before))
    assert len(starts) == 4
    for run, step in saved.items():  # each continues from its newest checkpoint, whatever Tune's state named
        resumed = json.loads((sweep / "trials" / run / "attempts" / f"{starts[run]:03d}.json").read_text())
        assert resumed["from_checkpoint"] == (step is not None), (run, step)
        if step is not None:
            assert f"[{run}] resumed from step {step}" in proc.stdout
    steps = pd.read_parquet(sweep / "results" / "steps.parquet")
    assert steps.groupby(["trial_id", "split", "step"]).size().max() == 1  # nothing duplicated
    assert (steps.groupby("trial_id").step.max() == 100).all()


def test_report_from_real_trials(finished):
    """The end of `sweep run`: statistics and a report whose every section holds real data."""
    from tests.test_aggregate_report import PNG, parse

    sweep, log = finished
    summary = sweep / "summary"
    assert f"report: {summary / 'report.html'}" in log
    page = parse(summary / "report.html")
    figures = sorted(alt for alt, src in page.images if src.startswith(PNG))
    assert figures == ["attention.png", "curves.png", "layers.png", "positions.png", "ratio_by_peak.png",
                       "ratio_heatmap.png"]
    assert all((summary / f).stat().st_size > 1000 for f in figures)
    text = " ".join(page.text)
    assert "No data for this figure" not in text
    cells = pd.read_parquet(summary / "cells.parquet")
    ppl = cells[cells.metric == "eval_ppl"].set_index(["configuration", "schedule", "comparator"], drop=False)
    trials = pd.read_parquet(sweep / "results" / "trials.parquet").set_index("trial_id")
    quintic = ppl[(ppl.configuration == "peak-1") & (ppl.schedule == "quintic")].iloc[0]
    assert quintic.n_seeds == 1 and quintic["mean"] == pytest.approx(trials.loc["peak-1__quintic__s1", "eval_ppl"])
    expected_ratio = trials.loc["peak-1__quintic__s1", "eval_ppl"] / trials.loc["peak-0__quintic__s1", "eval_ppl"]
    assert quintic.ratio_mean == pytest.approx(expected_ratio)
    layers = pd.read_parquet(summary / "layers.parquet")
    assert set(layers.layer) == {0, 1, 2}
    # the loss by position in the block: in trial.parquet and with the same paired statistics
    for m in ("eval_loss_pos1", "eval_loss_pos2_4", "eval_loss_pos5p"):
        r = cells[(cells.metric == m) & (cells.configuration == "peak-1") & (cells.schedule == "quintic")].iloc[0]
        assert r["mean"] == pytest.approx(trials.loc["peak-1__quintic__s1", m])
        assert r.ratio_mean == pytest.approx(trials.loc["peak-1__quintic__s1", m] / trials.loc["peak-0__quintic__s1", m])


def test_report_of_a_real_sweep_says_what_was_run(finished):
    """Provenance at the top of the report and in provenance.json, and the scale statement that
    keeps the paper's figures out of a run this small."""
    import re

    from tests.test_aggregate_report import parse

    sweep, _ = finished
    summary = sweep / "summary"
    prov = json.loads((summary / "provenance.json").read_text())
    trials = pd.read_parquet(sweep / "results" / "trials.parquet")
    n_params = int(trials.n_params.iloc[0])
    assert prov["sweep"] == "tiny" and prov["description"] == "a tiny real sweep of the tests"
    assert prov["model"] == {"name": "tiny", "n_layer": 3, "n_embd": 64, "n_head": 2, "n_params": n_params}
    assert prov["data"]["corpus"] == "corpus.txt" and prov["data"]["seq_len"] == 64
    assert prov["train"] == {"steps": 12, "batch_size": 4, "grad_accum": 1, "workers": 1, "global_batch": 4,
                             "tokens_per_trial": 12 * 4 * 64}
    assert prov["seeds"] == [1] and prov["trials"] == {"rows": 5, "runs": 4, "deduplicated": 1, "excluded": 0}
    assert prov["versions"]["torch"] == trials["version.torch"].iloc[0] and prov["versions"]["ray"]
    assert prov["devices"] == "cpu" and prov["wall_s"]["total"] == pytest.approx(
        trials.drop_duplicates("run_trial_id").wall_s.sum())
    assert prov["scale"]["comparable"] is False and prov["scale"]["param_fraction"] < 0.01
    page = parse(summary / "report.html")
    assert page.headings[1] == "What was run"  # right under the title
    text = re.sub(r"\s+", " ", " ".join(page.text))
    for shown in ("a tiny real sweep of the tests", f"{n_params:,}", "tiny, 3 layers, 64 hidden, 2 heads",
                  "corpus.txt", "3,072 training tokens per trial", "12 steps, batch 4", "seq_len 64",
                  "5 cell x seed rows run as 4 trials (1 deduplicated", f"torch {trials['version.torch'].iloc[0]}",
                  "cpu, on"):
        assert shown in text, shown
    assert f"Scale: this sweep trained {n_params / 1e6:.2f}M parameters" in text
    assert "of GPT-2 small's 124M" in text and "this run is far smaller, so they are left out" in text
    assert "1.89x" not in text and "6.6x" not in text  # no paper figure beside a model this small


def test_resume_of_a_copied_sweep_folder_stays_in_the_copy(finished):
    import shutil

    sweep, _ = finished
    copy = sweep.parent / "tiny-copy"
    shutil.copytree(sweep, copy)
    before = (sweep / "results" / "trials.parquet").stat().st_mtime_ns
    proc = subprocess.run(CLI + ["sweep", "resume", str(copy), "--no-aggregate"], env=env(), capture_output=True,
                          text=True, timeout=300, cwd=sweep.parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"-> {copy}" in proc.stdout and "continuing it" in proc.stdout
    assert set(attempts(copy).values()) == {1}  # nothing ran again
    assert (sweep / "results" / "trials.parquet").stat().st_mtime_ns == before  # the original is untouched
    assert len(pd.read_parquet(copy / "results" / "trials.parquet")) == 5


def test_scale_benchmark_reads_what_trials_record(finished):
    """What benchmarks/scale.py reads is recorded by a real sweep: each trial's setup timings, report and
    output seconds, when its first step ended; and its counters see every storage call of status/collect."""
    import pyarrow.parquet as pq

    from benchmarks import scale
    from orchestrator.spec import expand, runs

    sweep, _ = finished
    rows = pq.read_table(sweep / "results" / "trials.parquet").to_pylist()
    assert rows and all(r["status"] == "completed" for r in rows)
    for r in rows:
        assert all(r[c] >= 0 for c in scale.TIMING_COLUMNS), r
        assert r["first_step_at"] > 1e9 and r["setup_model_s"] > 0 and r["outputs_s"] > 0
    reads = scale._reads(str(sweep), with_aggregate=False)
    n_runs = len(runs(expand(scale.layout_spec(str(sweep)))))
    assert reads["status_calls"]["list"] <= 3  # trials/ listed once, not once per run
    assert reads["collect_calls"]["read"] >= 4 * n_runs and reads["collect_s"] > 0
    files, trial_files, by_folder = scale._objects(str(sweep))
    assert files > trial_files > 0 and by_folder["trials"] == trial_files
    starts = scale._worker_starts(str(sweep), pq.read_table(sweep / "results" / "trials.parquet").to_pandas())
    assert starts["workers"] >= 1 and len(starts["ends"]) == n_runs
    growth, a, b = scale.rss_growth([(0.0, 100.0), (10.0, 110.0), (20.0, 120.0)], [float(x) for x in range(1, 21)])
    assert a == 100.0 and b == 120.0 and growth == pytest.approx(20 / 17)
