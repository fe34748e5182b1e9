"""The Parquet files of one trial. Column names are a contract: the README documents each one."""

from __future__ import annotations

import importlib.metadata as md
import time

import pyarrow as pa

from localist import io, trial_files
from localist.config import TrialConfig

# Held-out loss by the query token's 0-based position in its block: name -> [low, high) positions.
# trial.parquet gets one token-weighted mean NLL (nats) per group; see Trainer.block_positions.
POSITION_GROUPS = {"eval_loss_pos1": (0, 1), "eval_loss_pos2_4": (1, 4), "eval_loss_pos5p": (4, None)}
POSITION_LABELS = {"eval_loss_pos1": "first token of its block", "eval_loss_pos2_4": "positions 2-4",
                   "eval_loss_pos5p": "positions 5+"}  # how the report and model cards name the groups
# The evaluation before the first update (the starting model under the trial's locality: for a
# pretrained base, locality's zero-shot cost): trial.parquet's step0_* columns, and step-0 rows in
# steps/layers.parquet. None of a trial resumed from a checkpoint written before they existed.
STEP0_PREFIX = "step0_"
STEP0_COLUMNS = tuple(STEP0_PREFIX + m for m in ("eval_loss", "eval_ppl", *POSITION_GROUPS))

# The long-format files beside trial.parquet: kind -> schema (the one declaration of their columns).
SCHEMAS = {
    "steps": pa.schema([("trial_id", pa.string()), ("step", pa.int64()), ("split", pa.string()),
                        ("loss", pa.float64()), ("ppl", pa.float64()), ("lr", pa.float64()),
                        ("tokens_seen", pa.int64()), ("elapsed_s", pa.float64())]),
    "layers": pa.schema([("trial_id", pa.string()), ("step", pa.int64()), ("layer", pa.int64()),
                         ("lambda", pa.float64()), ("entropy_bits", pa.float64()),
                         ("entropy_norm", pa.float64()), ("in_block_mass", pa.float64())]),
    "attention": pa.schema([("trial_id", pa.string()), ("layer", pa.int64()), ("query", pa.int64()),
                            ("key", pa.int64()), ("weight", pa.float64()), ("token", pa.string())]),
}
STEP_COLUMNS = SCHEMAS["steps"].names
LAYER_COLUMNS = SCHEMAS["layers"].names


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("localist", "torch", "transformers", "accelerate", "ray", "pyarrow"):
        try:
            out[f"version.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            out[f"version.{pkg}"] = ""
    return out


def _table(kind: str, trial_id: str, rows: list[dict]) -> pa.Table:
    schema = SCHEMAS[kind]
    cols = {name: [trial_id] * len(rows) if name == "trial_id" else [r[name] for r in rows]
            for name in schema.names}
    return pa.table(cols, schema=schema)


def trial_row(trial_id: str, cfg: TrialConfig, summary: dict) -> dict:
    flat = {k: (str(v) if isinstance(v, list) else v) for k, v in cfg.flat().items()}
    return {"trial_id": trial_id, **flat, **summary, **versions()}


def write_rows(out: str, trial_id: str, steps: list[dict], layers: list[dict]) -> None:
    """steps.parquet and layers.parquet with every row so far (each write replaces the file atomically),
    also while the trial runs: without trial.parquet beside them they are partial."""
    io.write_parquet(_table("steps", trial_id, steps), io.join(out, trial_files.STEPS))
    io.write_parquet(_table("layers", trial_id, layers), io.join(out, trial_files.LAYERS))


def write_trial(out: str, trial_id: str, cfg: TrialConfig, summary: dict, steps: list[dict],
                layers: list[dict], attention: list[dict]) -> dict:
    """steps, layers and attention first; trial.parquet last, so its presence means 'complete'
    (its ``outputs_s``: the seconds the three others took to write)."""
    t0 = time.perf_counter()
    write_rows(out, trial_id, steps, layers)
    io.write_parquet(_table("attention", trial_id, attention), io.join(out, trial_files.ATTENTION))
    row = trial_row(trial_id, cfg, {**summary, "outputs_s": time.perf_counter() - t0})
    io.write_parquet(pa.Table.from_pylist([row]), io.join(out, trial_files.TRIAL))
    return row
