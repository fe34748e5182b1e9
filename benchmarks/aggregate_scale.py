"""Time ``localist aggregate`` (without the report's figures) on a large synthetic result set.

Builds ``results/{trials,steps,layers,attention}.parquet`` the way the sweep collector writes
them (7 configurations x 5 schedules x seeds plus 2 comparators, the peak-0 cells deduplicated
onto one run per seed, a few diverged/errored trials) with 1,000,000 step rows and 200,000 layer
rows by default, then times ``orchestrator.analysis.aggregate.aggregate(..., report=False)``.
Target: under 5 s on 2 CPU cores.

    python -m benchmarks.aggregate_scale [--quick] [--steps N] [--layers N] [--seeds N] [--keep DIR]
    python benchmarks/aggregate_scale.py --quick
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from localist import io as lio  # noqa: E402
from orchestrator import layout  # noqa: E402

PEAKS = (0.0, 1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1.0)
SCHEDULES = ("linear", "quadratic", "cubic", "quartic", "quintic")
COMPARATORS = ("uniform-strict", "window")
TARGET_S = 5.0


def config_name(peak: float) -> str:
    return f"peak-{round(peak, 3):g}"


def plan_trials(peaks=PEAKS, schedules=SCHEDULES, comparators=COMPARATORS, seeds=(1, 2, 3),
                failures: bool = True, n_layer: int = 8) -> list[dict]:
    """One dict per trial row (grid cell x seed, comparator x seed) with its true ratio."""
    rows = []
    for seed in seeds:
        for peak in peaks:
            for power, sched in enumerate(schedules, start=1):
                conf = config_name(peak)
                run = f"{conf}__{schedules[0]}__s{seed}" if peak == 0 else f"{conf}__{sched}__s{seed}"
                ratio = 1.0 + peak * (0.89 + 0.8 * (len(schedules) - power))
                rows.append({"trial_id": f"{conf}__{sched}__s{seed}", "run_trial_id": run,
                             "configuration": conf, "schedule": sched, "comparator": None, "seed": seed,
                             "peak": peak, "power": float(power), "ratio": ratio, "n_layer": n_layer})
        for comp, ratio in zip(comparators, (6.6, 2.5, 3.0, 3.5)):
            rows.append({"trial_id": f"{comp}__s{seed}", "run_trial_id": f"{comp}__s{seed}",
                         "configuration": None, "schedule": None, "comparator": comp, "seed": seed,
                         "peak": 1.0, "power": 0.0 if comp.startswith("uniform") else 5.0,
                         "ratio": ratio, "n_layer": n_layer})
    if failures and len(rows) > 8:
        # one diverged and one errored run, neither of them the baseline
        grid = [r for r in rows if r["comparator"] is None and r["peak"] > 0]
        grid[len(grid) // 3]["status"] = "diverged"
        grid[(2 * len(grid) // 3 + 7) % len(grid)]["status"] = "errored"
    return rows


def _strings(values: list, index: np.ndarray) -> pa.Array:
    """A string column taking values[index[i]] (built through a dictionary: fast for 1M rows)."""
    dictionary = pa.array(values, type=pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32)), dictionary).cast(pa.string())


def _per_trial(trials: list[dict], total: int) -> tuple[np.ndarray, np.ndarray]:
    """(trial index, position within the trial) for ``total`` rows spread evenly over trials."""
    per = math.ceil(total / len(trials))
    trial = np.repeat(np.arange(len(trials)), per)[:total]
    pos = np.tile(np.arange(per), len(trials))[:total]
    return trial, pos


def build_results(sweep_uri: str, steps: int = 1_000_000, layers: int = 200_000, seeds=(1, 2, 3),
                  seq_len: int = 24, failures: bool = True, rng_seed: int = 0,
                  **plan) -> tuple[list[dict], int, int]:
    """Write a synthetic ``<sweep_uri>/results`` matching the collector's contract.

    Returns (the trial plan, step rows, layer rows); layer rows are whole evaluations of
    ``n_layer`` layers, so ``layers`` is rounded down to a multiple of it (8 by default).
    """
    rng = np.random.default_rng(rng_seed)
    trials = plan_trials(seeds=seeds, failures=failures, **plan)
    n_layer = trials[0]["n_layer"]
    run_ids = sorted({t["run_trial_id"] for t in trials})
    run_noise = {r: rng.normal(0.0, 0.03) for r in run_ids}
    base_loss = {s: math.log(20.0) + rng.normal(0.0, 0.02) for s in seeds}
    for t in trials:
        t.setdefault("status", "completed")
        loss = base_loss[t["seed"]] + math.log(t["ratio"]) + (run_noise[t["run_trial_id"]] if t["peak"] > 0 else 0.0)
        done = t["status"] == "completed"
        t["eval_loss"] = loss if done else float("nan")
        t["eval_ppl"] = math.exp(loss) if done else float("nan")
        t["error"] = None if done else f"synthetic {t['status']}"

    def key_columns(idx: np.ndarray) -> dict:
        return {name: _strings([t[name] for t in trials], idx)
                for name in ("trial_id", "run_trial_id", "configuration", "schedule", "comparator")}

    all_idx = np.arange(len(trials))
    trial_cols = key_columns(all_idx)
    trial_cols.update({
        "seed": pa.array([t["seed"] for t in trials], pa.int64()),
        "status": pa.array([t["status"] for t in trials], pa.string()),
        "error": pa.array([t["error"] for t in trials], pa.string()),
        "eval_loss": pa.array([t["eval_loss"] for t in trials], pa.float64()),
        "eval_ppl": pa.array([t["eval_ppl"] for t in trials], pa.float64()),
        "locality.peak": pa.array([t["peak"] for t in trials], pa.float64()),
        "locality.schedule": pa.array(["uniform" if t["power"] == 0 else "polynomial" for t in trials]),
        "locality.power": pa.array([t["power"] for t in trials], pa.float64()),
        "model.n_layer": pa.array([n_layer] * len(trials), pa.int64()),
        "n_params": pa.array([124_439_808] * len(trials), pa.int64()),  # GPT-2 small scale
        "train_tokens": pa.array([1_000_000] * len(trials), pa.int64()),
        # held-out loss by position in the block: locality costs most at positions 2-4
        **{m: pa.array([t["eval_loss"] + shift * math.log(t["ratio"]) for t in trials], pa.float64())
           for m, shift in (("eval_loss_pos1", 0.3), ("eval_loss_pos2_4", 0.6), ("eval_loss_pos5p", -0.2))},
        "tokens_per_s": rng.uniform(2e4, 3e4, len(trials)),
        "wall_s": rng.uniform(100, 200, len(trials)),
        "peak_mem_mb": rng.uniform(900, 1100, len(trials)),
    })
    lio.write_parquet(pa.table(trial_cols), layout.results_file(sweep_uri, "trials"))

    seed_arr = np.array([t["seed"] for t in trials])
    log_ratio = np.array([math.log(t["ratio"]) for t in trials])

    # steps: every 10th row is an eval row at the same step as the train row before it
    ti, pos = _per_trial(trials, steps)
    is_eval = pos % 10 == 9
    step = (pos - pos // 10).astype(np.int64)
    loss = 3.0 + 2.0 * np.exp(-step / 300.0) + log_ratio[ti] + rng.normal(0, 0.05, steps)
    step_cols = key_columns(ti)
    step_cols.update({
        "seed": pa.array(seed_arr[ti], pa.int64()), "step": pa.array(step),
        "split": _strings(["train", "eval"], is_eval.astype(np.int64)),
        "loss": loss, "ppl": np.exp(loss), "lr": np.full(steps, 3e-4),
        "tokens_seen": step * 4096, "elapsed_s": step * 0.05,
    })
    lio.write_parquet(pa.table(step_cols), layout.results_file(sweep_uri, "steps"))

    # layers: n_layer rows per evaluation, whole evaluations only (layers // n_layer of them)
    ti, evaluation = _per_trial(trials, layers // n_layer)
    ti, evaluation = np.repeat(ti, n_layer), np.repeat(evaluation, n_layer)
    layer = np.tile(np.arange(n_layer), len(ti) // n_layer)
    layers = len(ti)
    depth = layer / max(n_layer - 1, 1)
    peak = np.array([t["peak"] for t in trials])[ti]
    power = np.array([t["power"] for t in trials])[ti]
    lam = np.where(power == 0, peak, peak * depth ** np.maximum(power, 1))
    ent = np.log2(seq_len) * (1.0 - 0.6 * lam) + rng.normal(0, 0.05, layers)
    layer_cols = key_columns(ti)
    layer_cols.update({
        "seed": pa.array(seed_arr[ti], pa.int64()), "step": pa.array((evaluation * 100).astype(np.int64)),
        "layer": pa.array(layer.astype(np.int64)), "lambda": lam, "entropy_bits": ent,
        "entropy_norm": ent / np.log2(seq_len),
        "in_block_mass": np.clip(0.3 + 0.7 * lam + rng.normal(0, 0.02, layers), 0, 1),
    })
    lio.write_parquet(pa.table(layer_cols), layout.results_file(sweep_uri, "layers"))

    # attention: first and last layer, causal seq_len x seq_len
    q, k = np.tril_indices(seq_len)
    per = len(q)
    ti = np.repeat(all_idx, 2 * per)
    lay = np.tile(np.repeat([0, n_layer - 1], per), len(trials))
    qq, kk = np.tile(q, 2 * len(trials)), np.tile(k, 2 * len(trials))
    lam_last = np.array([t["peak"] for t in trials])[ti] * (lay > 0)
    block = (qq // 6 == kk // 6)
    weight = np.where(block, 1.0, 1.0 - lam_last) / (qq + 1)
    tokens = [f"w{i}" for i in range(seq_len)]
    att_cols = key_columns(ti)
    att_cols.update({"seed": pa.array(seed_arr[ti], pa.int64()), "layer": pa.array(lay.astype(np.int64)),
                     "query": pa.array(qq.astype(np.int64)), "key": pa.array(kk.astype(np.int64)),
                     "weight": weight, "token": _strings(tokens, kk)})
    lio.write_parquet(pa.table(att_cols), layout.results_file(sweep_uri, "attention"))
    return trials, steps, layers


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (for the test suite)")
    parser.add_argument("--steps", type=int, default=None, help="step rows (default 1,000,000)")
    parser.add_argument("--layers", type=int, default=None, help="layer rows (default 200,000)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keep", default=None, help="build the sweep here and keep it")
    args = parser.parse_args(argv)
    steps = args.steps or (20_000 if args.quick else 1_000_000)
    layers = args.layers or (4_000 if args.quick else 200_000)
    seeds = tuple(range(1, (2 if args.quick else args.seeds) + 1))

    from orchestrator.analysis.aggregate import aggregate

    root = args.keep or tempfile.mkdtemp(prefix="aggregate-scale-")
    try:
        t0 = time.perf_counter()
        trials, steps, layers = build_results(root, steps=steps, layers=layers, seeds=seeds)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = aggregate(root, report=False, echo=lambda *_: None)
        elapsed = time.perf_counter() - t0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    rows = steps + layers + len(trials)
    print(f"synthetic sweep: {len(trials)} trials, {steps:,} step rows, {layers:,} layer rows "
          f"(built in {built:.1f} s)")
    print(f"aggregate without figures: {elapsed:.2f} s, {rows / elapsed:,.0f} rows/s "
          f"({len(out['cells'])} cell rows, {len(out['layers'])} layer rows, {len(out['curves'])} curve rows); "
          f"target < {TARGET_S:.0f} s: {'met' if elapsed < TARGET_S else 'MISSED'}")
    return elapsed


if __name__ == "__main__":
    main()
