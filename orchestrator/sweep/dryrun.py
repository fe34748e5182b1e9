"""`sweep run --dry-run`: the trial table, dedup counts and what the sweep will cost.

Cost is stated per run and in total: steps, tokens, FLOPs (6 x params x tokens), storage
(checkpoints from the parameter count and keep_checkpoints, results, saved models) and, when a
throughput is known (`--tokens-per-s`, or a figure `benchmarks/gpu_check.py` recorded for this
model shape), trial-hours and wall time on the cluster's slots. All of it is an estimate. The
throughput is one worker's: a trial of N data-parallel workers is taken to train N times as fast
(ideal scaling), and costs N times the GPU-hours per hour. Each trial's workers, GPUs and global
batch (batch_size x grad_accum x workers) are in its row.
"""

from __future__ import annotations

import json
import math
import os

import pandas as pd

from localist.attention import describe_paths, layer_paths
from localist.compute import flex_decision
from localist.schedules import layer_lambdas
from localist import io
from orchestrator.spec import SweepSpec, Trial, pretrain_stage, runs
from orchestrator.sweep.train_workers import per_trial_line


def _tokens(cfg) -> int:
    t = cfg.train
    return t.steps * t.global_batch * cfg.data.seq_len  # over all workers


def _params(cfg, vocab: int) -> int | None:
    """Approximate parameter count of a tiny model (hub models are not loaded for a dry run)."""
    if cfg.model.name != "tiny":
        return {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080}.get(cfg.model.name)
    m = cfg.model
    return 12 * m.n_layer * m.n_embd**2 + (vocab + cfg.data.seq_len) * m.n_embd


CKPT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two fp32 moments (Accelerate's save_state)
MODEL_BYTES_PER_PARAM = 4  # a saved model: fp32 safetensors
GPU_CHECK_FILES = ("gpu_check_out/gpu_check.json", "benchmarks/gpu_check.json")
HUB_SHAPES = {"gpt2": (12, 768, 12, 50257), "gpt2-medium": (24, 1024, 16, 50257), "gpt2-large": (36, 1280, 20, 50257)}


def human(x: float, unit: str, base: float = 1000.0) -> str:
    """3.2e18 FLOP -> '3.24 EFLOP'; 1.5e9 B -> '1.50 GB': never '0.00 P...'."""
    prefixes = ["", "k", "M", "G", "T", "P", "E", "Z"]
    i = 0
    while abs(x) >= base and i < len(prefixes) - 1:
        x, i = x / base, i + 1
    return f"{x:.3g} {prefixes[i]}{unit}" if i else f"{x:,.0f} {unit}"


def count(n: float, what: str) -> str:
    """32_768_000 -> '32.8 million tokens' (counts in words, units with SI prefixes)."""
    for size, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million")):
        if n >= size:
            return f"{n / size:.3g} {word} {what}"
    return f"{n:,.0f} {what}"


def _shape(cfg) -> tuple[int, int, int, int] | None:
    if cfg.model.name == "tiny":
        m = cfg.model
        return m.n_layer, m.n_embd, m.n_head, cfg.data.vocab_size
    return HUB_SHAPES.get(cfg.model.name)


def recorded_tokens_per_s(cfg, files=GPU_CHECK_FILES) -> tuple[float, str] | None:
    """A GPU throughput gpu_check.py recorded for this model shape and sequence length, if any."""
    shape = _shape(cfg)
    for f in files:
        if not shape or not os.path.exists(f):
            continue
        with open(f) as fh:
            rec = json.load(fh)
        s = (rec.get("info") or {}).get("shape") or {}
        if (s.get("n_layer"), s.get("n_embd"), s.get("n_head"), s.get("vocab")) != shape:
            continue
        compiled = cfg.train.compiled_on("cuda")  # the figure is a GPU's: compiled unless compile is off
        for row in (rec.get("trainer") or []) + (rec.get("throughput") or []):
            variant = str(row.get("variant", ""))
            if (variant.replace(" +compile", "") == "bias quintic" and row.get("seq") == cfg.data.seq_len
                    and row.get("compiled", "+compile" in variant) == compiled and row.get("tokens_per_s")):
                return float(row["tokens_per_s"]), (f"{f}: bias quintic{' compiled' if compiled else ''}, "
                                                    f"seq {row['seq']}, batch {row.get('batch')}")
    return None


def attention_paths(cfg, lambdas: list[float] | None, device: str) -> str:
    """The attention path each layer will take in training on this device (localist.compute), counted."""
    if lambdas is None:
        return "(from the model)"
    flex_on, _ = flex_decision(device, cfg.locality.mechanism, cfg.model.attn_dropout)
    return describe_paths(layer_paths(lambdas, cfg.locality.mechanism, flex_on))


def _result_bytes(cfg) -> int:
    """Parquet of one run: summary and attention sample (~40 kB) + step and layer rows."""
    t = cfg.train
    evals = math.ceil(t.steps / t.eval_every) + int(t.eval_at_start)
    n_layer = (_shape(cfg) or (12,))[0]
    return 40_000 + 64 * (t.steps // t.log_every + evals + n_layer * evals)


def compute_lines(spec: SweepSpec, unique: dict, tokens_per_s: float | None = None, slots: int | None = None,
                  tps_source: str = "--tokens-per-s") -> list[str]:
    cfgs = list(unique.values())
    tokens = [_tokens(c) for c in cfgs]
    params = [_params(c, c.data.vocab_size) for c in cfgs]
    lines = ["compute and storage (estimates):"]

    def per_run(values, fmt) -> str:
        lo, hi = min(values), max(values)
        return fmt(lo) if lo == hi else f"{fmt(lo)} to {fmt(hi)}"

    steps = [c.train.steps for c in cfgs]
    lines.append(f"  per run: {per_run(steps, lambda v: f'{v:,} steps')}, {per_run(tokens, lambda v: count(v, 'tokens'))}"
                 + (f", {per_run([6 * p * n for p, n in zip(params, tokens)], lambda v: human(v, 'FLOP'))}"
                    f" (6 x {per_run(params, lambda v: count(v, 'params'))} x tokens)" if all(params) else ""))
    total_flop = sum(6 * p * n for p, n in zip(params, tokens)) if all(params) else None
    lines.append(f"  total: {len(cfgs)} runs, {count(sum(tokens), 'training tokens')}"
                 + (f", {human(total_flop, 'FLOP')}" if total_flop else ""))
    if all(params):
        ckpt = max(params) * CKPT_BYTES_PER_PARAM
        if any(c.train.checkpoint_every for c in cfgs):
            held = spec.keep_checkpoints + 1  # the next one is written before the oldest is removed
            per_trial = ckpt * held
            at_once = f" x {slots} at a time = {human(per_trial * slots, 'B')}" if slots else ""
            lines.append(f"  checkpoints: {human(ckpt, 'B')} each ({CKPT_BYTES_PER_PARAM} B/param: weights + AdamW);"
                         f" at most {held} per running trial (keep_checkpoints {spec.keep_checkpoints}, +1 while the "
                         f"next is written) = {human(per_trial, 'B')}{at_once}; none once a trial completes")
        else:
            lines.append("  checkpoints: none (checkpoint_every is 0: an interrupted trial restarts from step 0)")
    results = sum(_result_bytes(c) for c in cfgs)
    models = sum(p * MODEL_BYTES_PER_PARAM for p, c in zip(params, cfgs) if p and c.train.save_model)
    lines.append(f"  results: about {human(results, 'B')} of Parquet"
                 + (f" + {human(models, 'B')} of saved models (save_model)" if models else "")
                 + f" = {human(results + models, 'B')} kept after the sweep")
    if tokens_per_s:
        gpus = spec.resources.gpu
        workers = [c.train.workers for c in cfgs]
        hours = [n / (tokens_per_s * w) / 3600 for n, w in zip(tokens, workers)]  # ideal data-parallel scaling
        total_h = sum(hours)
        per_trial = sorted({w * (gpus or spec.resources.cpu) for w in workers})
        each = "/".join(f"{x:g}" for x in per_trial)
        unit = f"GPU-hours ({each} GPU per trial)" if gpus else f"CPU trial-hours ({each} CPU each)"
        from orchestrator.sweep.status import duration

        whose = "per trial" if max(workers) == 1 else "per worker (a trial of N workers: N times as fast)"
        lines.append(f"  time at {tokens_per_s:,.0f} tokens/s {whose} ({tps_source}): "
                     f"{per_run([h * 3600 for h in hours], duration)} per run, "
                     f"{sum(h * w for h, w in zip(hours, workers)) * (gpus or 1):,.1f} {unit}")
        counts = [slots] if slots else sorted({1, 8, 32, spec.max_concurrent or 1, len(cfgs)})
        walls = []
        for n in counts:
            # runs are alike, so n slots finish ceil(runs / n) rounds of the longest run
            waves = math.ceil(len(cfgs) / n)
            gpus_at_once = f" ({n * max(per_trial):g} GPUs)" if gpus and max(workers) > 1 else ""
            walls.append(f"{duration(max(max(hours) * 3600 * waves, total_h * 3600 / n))} on {n} slot{'s' * (n > 1)}"
                         + gpus_at_once)
        lines.append("  wall time: " + ", ".join(walls))
    else:
        lines.append("  time: give --tokens-per-s N (one trial's training throughput, one worker's for trials of "
                     "several workers) for GPU-hours and wall time")
    return lines


def resources_line(spec: SweepSpec, trials: list[Trial]) -> str:
    """'1 CPU per trial' or '4 workers x (8 CPU, 1 GPU) = 4 GPU, 32 CPU per trial', per distinct worker count."""
    counts = sorted({t.config.train.workers for t in trials}) or [spec.resources.workers]
    line = "; ".join(per_trial_line(spec, w) for w in counts)
    if max(counts) > 1:
        line += f" (Ray Train; workers {'may span nodes' if spec.resources.span_nodes else 'on one node'})"
    return line


def concurrency_default(trials: list[Trial]) -> str:
    """What max_concurrent: null means (driver.tune_spec)."""
    if max((t.config.train.workers for t in trials), default=1) > 1:
        return "the trials the cluster holds at once when the sweep starts (its GPUs, or CPUs, over one trial's)"
    return "as resources allow"


def batch_lines(trials: list[Trial]) -> list[str]:
    """The global batch of each distinct (batch_size, grad_accum, workers, seq_len)."""
    seen = {}
    for t in trials:
        tc = t.config.train
        seen[(tc.batch_size, tc.grad_accum, tc.workers, t.config.data.seq_len)] = tc.global_batch
    return [f"global batch: {g:,} sequences = {g * seq:,} tokens per step (batch_size {b} x grad_accum {a} x "
            f"{w} worker{'s' * (w > 1)})" for (b, a, w, seq), g in sorted(seen.items())]


def _with_base_shape(spec: SweepSpec, cfg):
    """A fine-tuning trial's config as its pretrained base's tiny model (a dry run loads no model;
    the shape and vocabulary are already the base's, spec.sweep_keys)."""
    stage = pretrain_stage(spec)
    if stage is None or cfg.model.name == "tiny":
        return cfg
    return cfg.model_copy(update={"model": stage.config.model})


def pretrain_lines(spec: SweepSpec) -> list[str]:
    """What the pretraining stage will do: reuse its base, or train it first (and what that costs)."""
    stage = pretrain_stage(spec)
    if stage is None:
        return []
    c = stage.config
    ready = all(io.exists(io.join(stage.base(s), "config.json")) for s in stage.seeds)
    what = (f"already trained in {stage.spec.uri}: reused" if ready
            else f"trained first, into {stage.spec.uri}")
    return [f"pretrain: base {stage.key} ({len(stage.seeds)} run{'s' * (len(stage.seeds) > 1)} of {c.train.steps:,} "
            f"steps, {count(_tokens(c), 'tokens')} each, on {c.data.corpus}, no locality): {what}"]


def render(spec: SweepSpec, trials: list[Trial], tokens_per_s: float | None = None, slots: int | None = None) -> str:
    rows = []
    device = "cuda" if spec.resources.gpu else "cpu"
    for t in trials:
        c = _with_base_shape(spec, t.config)
        loc = c.locality
        n_layer = (_shape(c) or (None,))[0]
        lambdas = layer_lambdas(loc, n_layer) if n_layer else None
        rows.append({"trial_id": t.trial_id, **{a: t.coords.get(a, "") for a in spec.axes},
                     "comparator": t.comparator or "", "seed": t.seed,
                     "runs_as": "(runs)" if t.run_id == t.trial_id else t.run_id,
                     "workers": c.train.workers, "gpus": f"{c.train.workers * spec.resources.gpu:g}",
                     "global_batch": c.train.global_batch,
                     "mechanism": loc.mechanism, "partition": loc.partition,
                     "lambdas": ", ".join(f"{x:.2f}" for x in lambdas) if lambdas else "(from the model)",
                     f"attention ({device})": attention_paths(c, lambdas, device)})
    df = pd.DataFrame(rows)
    if spec.search:  # the cells a search samples in; seeds and totals come from the search section
        from orchestrator.sweep.search_plan import describe

        cells = df[df["seed"] == spec.seeds[0]].drop(columns=["seed", "trial_id"])
        cells["runs_as"] = cells["runs_as"].str.replace(r"__s\d+$", "", regex=True)  # searched by that cell
        return "\n".join([f"sweep {spec.name!r} -> {spec.uri}", cells.to_string(index=False), "", *describe(spec),
                          f"resources: {resources_line(spec, trials)}"])
    unique = {k: _with_base_shape(spec, v) for k, v in runs(trials).items()}
    source = "--tokens-per-s"
    if not tokens_per_s:
        found = recorded_tokens_per_s(next(iter(unique.values())))
        if found:
            tokens_per_s, source = found
    n_cells = len([t for t in trials if not t.comparator])
    n_comp = len(trials) - n_cells
    lines = [
        f"sweep {spec.name!r} -> {spec.uri}",
        df.to_string(index=False),
        "",
        f"results: {len(trials)} ({n_cells} grid cells x seeds + {n_comp} comparator trials)",
        f"runs after dedup: {len(unique)} ({len(trials) - len(unique)} deduplicated: identical effective configs)",
        f"resources: {resources_line(spec, trials)}; max concurrent: {spec.max_concurrent or concurrency_default(trials)};"
        f" retries: {spec.retries}",
        *batch_lines(trials),
        *pretrain_lines(spec),
    ]
    return "\n".join(lines + compute_lines(spec, unique, tokens_per_s, slots or spec.max_concurrent, source))
