"""What a sweep ran, in one record: ``summary/provenance.json`` and the top of the report.

Everything is read from what the sweep left behind (``sweep.yaml`` and the consolidated
``results/trials.parquet``), so a report regenerated later still says what was run: model shape
and parameter count, corpus and tokens, steps, batch, data-parallel workers and global batch,
sequence length, seeds, how many trials ran,
were deduplicated or excluded, the package versions and devices of the trials, and their wall
time, and the pretrained base they fine-tuned (``pretrain.json``). The git commit is that of the
code doing the aggregation (its source folder, else the working directory), taken when git and a
repository are there, else left empty.

The record is written with its scale gap to GPT-2 small (``orchestrator.analysis.paper.scale_gap``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import yaml

from localist import io as lio
from localist.code_version import git_commit
from orchestrator import layout
from orchestrator.analysis.paper import scale_gap

COLUMNS = ("trial_id", "run_trial_id", "deduplicated", "status", "seed", "model.name", "model.n_layer",
           "model.n_embd", "model.n_head", "n_params", "data.corpus", "data.max_chars", "data.seq_len",
           "data.vocab_size", "train.steps", "train.batch_size", "train.grad_accum", "train.workers",
           "global_batch", "train_tokens",
           "device", "hostname", "wall_s", "version.localist", "version.torch", "version.transformers",
           "version.accelerate", "version.ray")


def _plain(v):
    """A JSON-able Python value (numpy scalars unwrapped, NaN as None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _values(df: pd.DataFrame, col: str):
    """The one value of a column, the sorted list of its distinct values, or None when absent."""
    if col not in df:
        return None
    vals = [_plain(v) for v in df[col].dropna().unique()]
    vals = [v for v in vals if v not in (None, "")]
    if not vals:
        return None
    vals = sorted(vals, key=lambda v: (str(type(v)), v))
    return vals[0] if len(vals) == 1 else vals


def _spec(sweep_uri: str) -> dict:
    uri = layout.spec_file(sweep_uri)
    try:
        return yaml.safe_load(lio.read_text(uri)) or {} if lio.exists(uri) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _pretrain(sweep_uri: str) -> dict | None:
    """The pretrained base the trials fine-tuned (the sweep's pretrain.json), or None."""
    uri = layout.pretrain_file(sweep_uri)
    try:
        return json.loads(lio.read_text(uri)) if lio.exists(uri) else None
    except (OSError, ValueError):
        return None


def collect(sweep_uri: str, trials: pd.DataFrame, n_excluded: int) -> dict:
    """The provenance record of a sweep; ``trials`` is results/trials.parquet (any columns)."""
    spec = _spec(sweep_uri)
    runs = trials.drop_duplicates("run_trial_id") if "run_trial_id" in trials else trials
    dedup = trials["deduplicated"].fillna(False).astype(bool) if "deduplicated" in trials else (
        trials["run_trial_id"] != trials["trial_id"] if "run_trial_id" in trials else pd.Series(False, trials.index))
    wall = pd.to_numeric(runs["wall_s"], errors="coerce") if "wall_s" in runs else pd.Series(dtype=float)
    params = pd.to_numeric(runs["n_params"], errors="coerce") if "n_params" in runs else pd.Series(dtype=float)
    tokens = pd.to_numeric(runs["train_tokens"], errors="coerce") if "train_tokens" in runs else pd.Series(dtype=float)
    name = spec.get("name") or os.path.basename(str(sweep_uri).rstrip("/"))
    return {
        "sweep": name,
        "description": spec.get("description") or "",
        "sweep_uri": str(sweep_uri),
        "model": {"name": _values(runs, "model.name"), "n_layer": _values(runs, "model.n_layer"),
                  "n_embd": _values(runs, "model.n_embd"), "n_head": _values(runs, "model.n_head"),
                  "n_params": _plain(params.max()) if params.notna().any() else None},
        "data": {"corpus": _values(runs, "data.corpus"), "max_chars": _values(runs, "data.max_chars"),
                 "vocab_size": _values(runs, "data.vocab_size"), "seq_len": _values(runs, "data.seq_len")},
        "train": {"steps": _values(runs, "train.steps"), "batch_size": _values(runs, "train.batch_size"),
                  "grad_accum": _values(runs, "train.grad_accum"), "workers": _values(runs, "train.workers"),
                  "global_batch": _values(runs, "global_batch"),  # sequences per step, over all workers
                  "tokens_per_trial": _plain(tokens.max()) if tokens.notna().any() else None},
        "pretrain": _pretrain(sweep_uri),
        "seeds": [int(s) for s in sorted(pd.to_numeric(trials["seed"], errors="coerce").dropna().unique())],
        "trials": {"rows": int(len(trials)), "runs": int(len(runs)), "deduplicated": int(dedup.sum()),
                   "excluded": int(n_excluded)},
        "versions": {pkg: _values(runs, f"version.{pkg}")
                     for pkg in ("localist", "torch", "transformers", "accelerate", "ray")},
        "git_commit": git_commit(),
        "devices": _values(runs, "device"),
        "hosts": _values(runs, "hostname"),
        "wall_s": {"total": _plain(wall.sum()) if wall.notna().any() else None,
                   "longest_trial": _plain(wall.max()) if wall.notna().any() else None},
    }


def write(sweep_uri: str, prov: dict) -> str:
    uri = layout.provenance_file(sweep_uri)
    lio.write_text(uri, json.dumps({**prov, "scale": scale_gap(prov)}, indent=2, default=str) + "\n")
    return uri
