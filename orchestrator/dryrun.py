"""`sweep run --dry-run`: the trial table, dedup counts and the compute a sweep implies."""

from __future__ import annotations

import pandas as pd

from localist.schedules import layer_lambdas
from orchestrator.spec import SweepSpec, Trial, runs


def _tokens(cfg) -> int:
    t = cfg.train
    return t.steps * t.batch_size * t.grad_accum * cfg.data.seq_len


def _params(cfg, vocab: int) -> int | None:
    """Approximate parameter count of a tiny model (hub models are not loaded for a dry run)."""
    if cfg.model.name != "tiny":
        return {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080}.get(cfg.model.name)
    m = cfg.model
    return 12 * m.n_layer * m.n_embd**2 + (vocab + cfg.data.seq_len) * m.n_embd


def render(spec: SweepSpec, trials: list[Trial]) -> str:
    rows = []
    for t in trials:
        c = t.config
        loc = c.locality
        n_layer = c.model.n_layer if c.model.name == "tiny" else None
        lam = ", ".join(f"{x:.2f}" for x in layer_lambdas(loc, n_layer)) if n_layer else "(from the model)"
        rows.append({"trial_id": t.trial_id, **{a: t.coords.get(a, "") for a in spec.axes},
                     "comparator": t.comparator or "", "seed": t.seed,
                     "runs_as": "(runs)" if t.run_id == t.trial_id else t.run_id,
                     "mechanism": loc.mechanism, "partition": loc.partition, "lambdas": lam})
    df = pd.DataFrame(rows)
    if spec.search:  # the cells a search samples in; seeds and totals come from the search section
        from orchestrator.search import describe

        cells = df[df["seed"] == spec.seeds[0]].drop(columns=["seed", "trial_id"])
        cells["runs_as"] = cells["runs_as"].str.replace(r"__s\d+$", "", regex=True)  # searched by that cell
        return "\n".join([f"sweep {spec.name!r} -> {spec.uri}", cells.to_string(index=False), "", *describe(spec),
                          f"resources per trial: {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU"])
    unique = runs(trials)
    tokens = {k: _tokens(v) for k, v in unique.items()}
    total = sum(tokens.values())
    flops = [6 * (_params(v, v.data.vocab_size) or 0) * tokens[k] for k, v in unique.items()]
    n_cells = len([t for t in trials if not t.comparator])
    n_comp = len(trials) - n_cells
    lines = [
        f"sweep {spec.name!r} -> {spec.uri}",
        df.to_string(index=False),
        "",
        f"results: {len(trials)} ({n_cells} grid cells x seeds + {n_comp} comparator trials)",
        f"runs after dedup: {len(unique)} ({len(trials) - len(unique)} deduplicated: identical effective configs)",
        f"per run: {next(iter(unique.values())).train.steps} steps x {_tokens(next(iter(unique.values()))):,} tokens"
        if len({_tokens(v) for v in unique.values()}) == 1 else "per run: varies",
        f"total: {total:,} training tokens"
        + (f", about {sum(flops) / 1e15:.2f} PFLOP (6 x params x tokens)" if all(flops) else ""),
        f"resources per trial: {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU;"
        f" max concurrent: {spec.max_concurrent or 'as resources allow'}; retries: {spec.retries}",
    ]
    return "\n".join(lines)
