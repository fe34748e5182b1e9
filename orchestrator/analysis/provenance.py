"""What a sweep ran, in one record: ``summary/provenance.json`` and the top of the report.

Everything is read from what the sweep left behind (``sweep.yaml`` and the consolidated
``results/trials.parquet``), so a report regenerated later still says what was run: model shape
and parameter count, corpus and tokens, steps, batch, sequence length, seeds, how many trials ran,
were deduplicated or excluded, the package versions and devices of the trials, and their wall
time. The git commit is that of the code doing the aggregation (its source folder, else the
working directory), taken when git and a repository are there, else left empty.

``scale_gap`` compares the run with GPT-2 small, the model the paper localises, and decides
whether the paper's figures may stand beside ours (``COMPARABLE_FRACTION``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from localist import io as lio

GPT2_SMALL_PARAMS = 124_439_808  # GPT-2 small with its tied 50257 x 768 embedding
# OpenAI published no token count for WebText (40 GB of text); its open reproduction
# OpenWebText is about 9.0e9 GPT-2 tokens (nanoGPT's prepare script), used as the reference.
GPT2_SMALL_TOKENS = 9.0e9
# The rule: the paper's figures are shown beside ours only when our model has at least this
# fraction of GPT-2 small's parameters; smaller runs cannot confirm or refute them.
COMPARABLE_FRACTION = 0.10

COLUMNS = ("trial_id", "run_trial_id", "deduplicated", "status", "seed", "model.name", "model.n_layer",
           "model.n_embd", "model.n_head", "n_params", "data.corpus", "data.max_chars", "data.seq_len",
           "data.vocab_size", "train.steps", "train.batch_size", "train.grad_accum", "train_tokens",
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


def git_commit() -> str | None:
    """HEAD of the repository holding this code (else the working directory), '+dirty' when
    tracked files differ from it; None without git or a repository."""
    for where in (Path(__file__).resolve().parents[1], Path.cwd()):
        try:
            head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=10)
            if head.returncode != 0:
                continue
            dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def _spec(sweep_uri: str) -> dict:
    from orchestrator import layout

    uri = layout.spec_file(sweep_uri)
    try:
        return yaml.safe_load(lio.read_text(uri)) or {} if lio.exists(uri) else {}
    except (OSError, yaml.YAMLError):
        return {}


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
                  "grad_accum": _values(runs, "train.grad_accum"),
                  "tokens_per_trial": _plain(tokens.max()) if tokens.notna().any() else None},
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


def scale_gap(prov: dict) -> dict:
    """Our scale against GPT-2 small: fractions, whether the paper's figures may be shown, and
    one sentence that says so."""
    params, tokens = prov["model"]["n_params"], prov["train"]["tokens_per_trial"]
    fp = params / GPT2_SMALL_PARAMS if params else None
    ft = tokens / GPT2_SMALL_TOKENS if tokens else None
    comparable = fp is not None and fp >= COMPARABLE_FRACTION
    ours = (f"{params / 1e6:.2f}M parameters ({fp:.2%} of GPT-2 small's {GPT2_SMALL_PARAMS / 1e6:.0f}M)"
            if fp is not None else "a model whose parameter count was not recorded")
    seen = (f"{tokens:,.0f} training tokens per trial ({ft:.1e} of the ~{GPT2_SMALL_TOKENS:.0e} tokens "
            "GPT-2 small was pretrained on)" if ft is not None else "an unrecorded number of tokens")
    rule = (f"The paper's figures are shown beside ours only when our model has at least "
            f"{COMPARABLE_FRACTION:.0%} of GPT-2 small's parameters")
    verdict = ("; this one does, but the training budgets still differ, so read the comparison as one of shape"
               if comparable else "; this run is far smaller, so they are left out: at this scale our "
               "figures can neither confirm nor refute the paper's")
    return {"param_fraction": fp, "token_fraction": ft, "comparable": comparable,
            "statement": f"Scale: this sweep trained {ours} on {seen}. {rule}{verdict}."}


def write(summary_uri: str, prov: dict) -> str:
    uri = lio.join(summary_uri, "provenance.json")
    lio.write_text(uri, json.dumps({**prov, "scale": scale_gap(prov)}, indent=2, default=str) + "\n")
    return uri
