"""Where a sweep keeps its files under its storage URI - one place, so readers and writers agree.

<storage>/<sweep>/
  sweep.yaml                 the validated spec the sweep was started with (resume reads it)
  driver.json                the cluster the last driver ran on and its trial slots (status's ETA)
  .driver.lock               held by the running driver (status says whether one is alive)
  stop.json                  a request to stop the running driver (`sweep stop`, or a signal to it)
  logs/driver-<time>.log     each driver's console output
  trials/<run_id>/           one trial's folder: trial/steps/layers/attention.parquet, progress.json,
                             attempts/*.json (one per start), error.json (last failure), values.json
                             and stopped.json (search trials); its layout is localist.trial_files
  tune/                      Ray Tune's experiment state; per trial (tune/<run_id>/) its checkpoint_*
                             folders and live metrics (progress.csv, result.json, params.json, TensorBoard);
                             a trial of several workers: its Ray Train run in tune/<run_id>/train/
                             (Train's checkpoint_<time> folders and checkpoint_manager_snapshot.json)
  mlflow.db                  MLflow's default store (SQLite, written by the driver only)
  mlflow-artifacts/          the artifact root of the experiments the driver creates there
  mlflow/                    an older sweep's MLflow file store (still used when it exists and mlflow.db does not)
  wandb/                     W&B's (offline) runs, when the sweep's `tracking:` uses the defaults
  tune-search/<group>/       search sweeps: one Tune experiment per search (searcher state inside)
  search/<group>.json        a finished search: its trials, ranked, and the settings to confirm
  search/_rounds.json        confirm.until: the seeds added in rounds and the cells each went to
  tune-seed<N>/              confirm.until: the Tune experiment of the round that added seed N
  pretrain.json              with `pretrain:`: the base the trials fine-tuned (key, config, steps, eval loss)
  results/                   consolidated {trials,steps,layers,attention}.parquet (+ search.parquet)
  summary/                   aggregation: cells/layers.parquet, report.html, figures
<storage>/pretrained/<key>/  a pretrained base (spec.pretrain_stage): a sweep of its own, one trial per
                             base seed (trials/pretrain__s<seed>/model is the base), shared by every
                             sweep in this storage whose `pretrain:` hashes to the same key
"""

from __future__ import annotations

import posixpath
import time

import yaml

from localist import io, trial_files


def sweep_name(sweep_uri: str) -> str:
    """The name of a sweep's folder, <storage>/<name> (a URI's query left out)."""
    return posixpath.basename(sweep_uri.partition("?")[0].rstrip("/"))


def trials_dir(sweep_uri: str) -> str:
    """trials/: one folder per run (trial_dir), laid out as localist.trial_files says."""
    return io.join(sweep_uri, "trials")


def trial_dir(sweep_uri: str, run_id: str) -> str:
    return io.join(trials_dir(sweep_uri), run_id)


def spec_file(sweep_uri: str) -> str:
    return io.join(sweep_uri, "sweep.yaml")


TUNE, TUNE_SEARCH, TUNE_SEED = "tune", "tune-search", "tune-seed"  # the sweep's Tune experiment folders


def tune_dir(sweep_uri: str) -> str:
    return io.join(sweep_uri, TUNE)


def pretrained_storage(storage_uri: str) -> str:
    """Where a storage keeps its pretrained bases: pretrained/<key>/, each a sweep folder of its own."""
    return io.join(storage_uri, "pretrained")


def pretrain_file(sweep_uri: str) -> str:
    """The pretrained base the sweep's trials fine-tune (orchestrator/sweep/pretrain.py writes it)."""
    return io.join(sweep_uri, "pretrain.json")


def driver_file(sweep_uri: str) -> str:
    """What the current (or last) driver found: the cluster and how many trials run at once."""
    return io.join(sweep_uri, "driver.json")


def status_file(sweep_uri: str) -> str:
    """The driver's snapshot of every run's state (rewritten each progress interval and at the end):
    `sweep status` and `watch` take the runs that are final there from it instead of reading each."""
    return io.join(sweep_uri, "status.json")


def mlflow_db(sweep_uri: str) -> str:
    """MLflow's default store, a SQLite database (local storage only; the driver is its one writer)."""
    return io.join(sweep_uri, "mlflow.db")


def mlflow_artifacts_dir(sweep_uri: str) -> str:
    """The artifact root of the experiments the driver creates in the default store."""
    return io.join(sweep_uri, "mlflow-artifacts")


def mlflow_dir(sweep_uri: str) -> str:
    """MLflow's file store, the default of sweeps started before the SQLite one (local storage only)."""
    return io.join(sweep_uri, "mlflow")


def wandb_dir(sweep_uri: str) -> str:
    """Where W&B keeps its (offline) runs (local storage only)."""
    return io.join(sweep_uri, "wandb")


def results_dir(sweep_uri: str) -> str:
    return io.join(sweep_uri, "results")




def results_file(sweep_uri: str, kind: str) -> str:
    return io.join(results_dir(sweep_uri), RESULT_FILES[kind])


def summary_dir(sweep_uri: str) -> str:
    return io.join(sweep_uri, "summary")


def summary_table(sweep_uri: str, name: str) -> str:
    """summary/<name>.parquet: aggregate's cells, layers, curves and excluded tables."""
    return io.join(summary_dir(sweep_uri), f"{name}.parquet")


def provenance_file(sweep_uri: str) -> str:
    """What the sweep ran, as aggregate found it."""
    return io.join(summary_dir(sweep_uri), "provenance.json")


def report_file(sweep_uri: str) -> str:
    return io.join(summary_dir(sweep_uri), "report.html")


# The report's figures, in its order; each is also saved beside it as summary/<figure>.
REPORT_FIGURES = ("ratio_heatmap.png", "ratio_by_peak.png", "positions.png", "layers.png", "curves.png",
                  "attention.png")


def figure_file(sweep_uri: str, figure: str) -> str:
    return io.join(summary_dir(sweep_uri), figure)


def search_tune_dir(sweep_uri: str, group: str) -> str:
    return io.join(sweep_uri, TUNE_SEARCH, group)


def search_dir(sweep_uri: str) -> str:
    return io.join(sweep_uri, "search")


def search_file(sweep_uri: str, group: str) -> str:
    return io.join(search_dir(sweep_uri), f"{group}.json")


def search_files(sweep_uri: str) -> list[str]:
    """The records of the searches that finished (search/<group>.json), by group name."""
    names = io.listdir(search_dir(sweep_uri))
    return [io.join(search_dir(sweep_uri), n) for n in names if n.endswith(".json") and not n.startswith("_")]


def rounds_file(sweep_uri: str) -> str:
    return io.join(search_dir(sweep_uri), "_rounds.json")  # '_' starts no cell name: never a search's file


# results/<kind>.parquet: the trials' files consolidated (rows keep the trial's file name), and the search's
RESULT_FILES = {"trials": "trials.parquet", **trial_files.ROWS, "search": "search.parquet"}


def tune_experiments(sweep_uri: str) -> dict[str, str | None]:
    """Every Tune experiment folder of a sweep -> the search it holds (None: grid or confirm trials):
    tune/, tune-seed<N>/ of sequential seeding, tune-search/<group>/."""
    out: dict[str, str | None] = {io.join(sweep_uri, n): None for n in io.listdir(sweep_uri)
                                  if n == TUNE or n.startswith(TUNE_SEED)}
    searches = io.join(sweep_uri, TUNE_SEARCH)
    out.update({io.join(searches, g): g for g in io.listdir(searches)})
    return out


def tune_trial_dir(sweep_uri: str, run_id: str) -> str:
    """A grid trial's folder in Tune's experiment: its checkpoints and live metrics."""
    return io.join(tune_dir(sweep_uri), run_id)


TUNE_CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folders in a trial's Tune folder: checkpoint_000003
CHECKPOINT_EMPTIED = "EMPTIED"  # the one file left in a checkpoint folder emptied while its sweep ran
TRAIN_RUN = "train"  # a multi-worker trial's Ray Train run (its checkpoints), inside the trial's Tune folder


def seed_tune_dir(sweep_uri: str, seed: int) -> str:
    """confirm.until: the Tune experiment of the round that added `seed`."""
    return io.join(sweep_uri, f"{TUNE_SEED}{seed}")


def lock_file(sweep_uri: str) -> str:
    """Held by the running driver (sweep/lock.py)."""
    return io.join(sweep_uri, ".driver.lock")


def stop_file(sweep_uri: str) -> str:
    """A request to stop the running driver gracefully (sweep/preempt.py); trials watch for it."""
    return io.join(sweep_uri, "stop.json")


def driver_log_file(sweep_uri: str, started: float) -> str:
    """The console log of the driver started at `started` (a time.time())."""
    return io.join(sweep_uri, "logs", time.strftime("driver-%Y%m%d-%H%M%S.log", time.gmtime(started)))


# The saved spec: what a sweep folder was started with (resume, status, collect and submit read it
# back with spec.load_saved).

def spec_text(spec) -> str:
    """sweep.yaml as the driver saves it (resume and `status` read it back)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def same_sweep(saved_text: str, spec) -> bool:
    """Equal apart from where it is stored (a sweep folder may be moved or copied). spec: a
    spec.SweepSpec (layout cannot import the module that reads sweep files: it names their paths)."""
    try:  # through the schema, so keys added since with their defaults compare equal
        saved = type(spec).model_validate(yaml.safe_load(saved_text) or {}).model_dump(mode="json")
    except ValueError:
        return False
    loose = ("storage", "tracking")  # where results and metrics go does not change the sweep
    return ({k: v for k, v in saved.items() if k not in loose} ==
            {k: v for k, v in spec.model_dump(mode="json").items() if k not in loose})
