"""What a report says about a search sweep: its results confirm searched settings, how each search
went, and whether seeds were added in rounds (read from search/<group>.json and _rounds.json)."""

from __future__ import annotations

import json

from localist import io
from orchestrator import layout
from orchestrator.search import CELL_KEY


def report_note(sweep_uri: str) -> str | None:
    """What the summary of a search sweep must say: its results confirm searched settings, how
    each search went, and whether seeds were added sequentially. None for other sweeps."""
    records = layout.search_files(sweep_uri)
    if not records:
        return None
    parts = []
    for f in records:
        rec = json.loads(io.read_text(f))
        statuses = [t["status"] for t in rec["trials"]]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
        best = rec["top"][0] if rec["top"] else None
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in (best["values"] if best else {}).items() if k != CELL_KEY)
        parts.append(f"{rec['group']}: {len(statuses)} trials ({counts}), best {shown} "
                     f"({rec['metric']} {best[rec['metric']]:.4f})" if best else f"{rec['group']}: no completed trial")
    text = ("These results rerun settings found by a search. Only completed search trials were ranked; "
            f"stopped (early-stopped), diverged and errored ones are listed in {layout.results_file('', 'search')} "
            "and never averaged. " + "; ".join(parts) + ".")
    rounds_f = layout.rounds_file(sweep_uri)
    rounds = json.loads(io.read_text(rounds_f)) if io.exists(rounds_f) else []
    if rounds:
        added = "; ".join(f"seed {r['seed']} to {', '.join(r['cells'])}" for r in rounds)
        text += (f" Sequential seeding: seeds were added in rounds ({added}) while a cell's ratio 95% t "
                 "half-width exceeded the target, so the number of seeds depended on the results seen.")
    return text
