"""Where a sweep keeps its files under its storage URI - one place, so readers and writers agree.

<storage>/<sweep>/
  sweep.yaml                 the validated spec the sweep was started with (resume reads it)
  driver.json                the cluster the last driver ran on and its trial slots (status's ETA)
  .driver.lock               held by the running driver (status says whether one is alive)
  trials/<run_id>/           one trial's trial/steps/layers/attention.parquet, progress.json,
                             attempts/*.json (one per start) and error.json (last failure)
  tune/                      Ray Tune's experiment state and checkpoints; per trial its live metrics
                             (progress.csv, result.json, params.json, TensorBoard event files)
  mlflow/, wandb/            tracker stores, when the sweep's `tracking:` uses the defaults
  tune-search/<group>/       search sweeps: one Tune experiment per search (searcher state inside)
  search/<group>.json        a finished search: its trials, ranked, and the settings to confirm
  search/_rounds.json        confirm.until: the seeds added in rounds and the cells each went to
  tune-seed<N>/              confirm.until: the Tune experiment of the round that added seed N
  results/                   consolidated {trials,steps,layers,attention}.parquet (+ search.parquet)
  summary/                   aggregation: cells/layers.parquet, report.html, figures
"""

from __future__ import annotations

import yaml

from localist import io
from localist.config import ConfigError
from orchestrator.spec import SweepSpec, validate


def trial_dir(sweep_uri: str, run_id: str) -> str:
    return io.join(sweep_uri, "trials", run_id)


def spec_file(sweep_uri: str) -> str:
    return io.join(sweep_uri, "sweep.yaml")


def tune_dir(sweep_uri: str) -> str:
    return io.join(sweep_uri, "tune")


def driver_file(sweep_uri: str) -> str:
    """What the current (or last) driver found: the cluster and how many trials run at once."""
    return io.join(sweep_uri, "driver.json")


def results_dir(sweep_uri: str) -> str:
    return io.join(sweep_uri, "results")


RESULT_KINDS = ("trials", "steps", "layers", "attention")  # results/<kind>.parquet (+ search.parquet)


def results_file(sweep_uri: str, kind: str) -> str:
    return io.join(results_dir(sweep_uri), f"{kind}.parquet")


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
    return io.join(sweep_uri, "tune-search", group)


def search_file(sweep_uri: str, group: str) -> str:
    return io.join(sweep_uri, "search", f"{group}.json")


def rounds_file(sweep_uri: str) -> str:
    return io.join(sweep_uri, "search", "_rounds.json")  # '_' starts no cell name: never a search's file


# The saved spec: what a sweep folder was started with (resume, status, collect and submit read it).

def spec_text(spec: SweepSpec) -> str:
    """sweep.yaml as the driver saves it (resume and `status` read it back)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def same_sweep(saved_text: str, spec: SweepSpec) -> bool:
    """Equal apart from where it is stored (a sweep folder may be moved or copied)."""
    try:  # through the schema, so keys added since with their defaults compare equal
        saved = SweepSpec.model_validate(yaml.safe_load(saved_text) or {}).model_dump(mode="json")
    except ValueError:
        return False
    loose = ("storage", "tracking")  # where results and metrics go does not change the sweep
    return ({k: v for k, v in saved.items() if k not in loose} ==
            {k: v for k, v in spec.model_dump(mode="json").items() if k not in loose})


def load_saved(sweep_uri: str) -> SweepSpec:
    """The spec a sweep was started with, from its storage."""
    f = spec_file(sweep_uri)
    if not io.exists(f):
        raise ConfigError(f"{sweep_uri}: not a sweep (no sweep.yaml); give the folder <storage>/<sweep name>")
    return validate(yaml.safe_load(io.read_text(f)), f)
