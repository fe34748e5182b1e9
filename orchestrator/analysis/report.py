"""The sweep report: one self-contained ``report.html`` (its figures embedded) written beside the
same figures as PNG files.

Built by ``orchestrator.analysis.aggregate.aggregate`` from the summary tables it has just computed
(a ``ReportInput``); every section says so when it has no data instead of failing, so small
sweeps (one seed, one schedule, no comparators) still get a report. The figures come from
``orchestrator.analysis.figures``; this module lays out the page.

It opens with what was run (``orchestrator.analysis.provenance``) and the scale gap to GPT-2 small; the
paper's headline figures appear only beside that statement and only when the run is not far
smaller (``orchestrator.analysis.paper``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import posixpath

import numpy as np
import pandas as pd

from localist import io as lio
from orchestrator import layout
from orchestrator.analysis import figures
from orchestrator.analysis.cells import is_null, label
from orchestrator.analysis.formatting import fmt, fmt_p, headline_rows, recovery_rows
from orchestrator.analysis.paper import CITATION, PAPER_V1, QUINTIC, UNIFORM_STRICT
from orchestrator.analysis.report_input import ReportInput
from orchestrator.analysis.stats import MIN_SEEDS_FOR_RANKS

_SWEEP = ""  # the page names summary files by their path in the sweep folder (orchestrator.layout's)
_TRIALS_FILE = posixpath.basename(layout.results_file(_SWEEP, "trials"))

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
td.note,th.note{white-space:normal;text-align:left;min-width:12em}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.base td{background:#f7f7ff}
.paper{background:#fff8e6}.muted{color:#666;font-size:.9em}img{max-width:100%;display:block;margin:.5em 0}
.nodata{color:#a33;font-style:italic}
.scroll{overflow-x:auto;max-width:100%}.scale{background:#fff3f3;border-left:4px solid #c66;padding:.4em .8em}
dl.prov{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:.92em}
dl.prov dt{font-weight:600}dl.prov dd{margin:0;overflow-wrap:anywhere}
"""


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None, left: int = 1,
           note: bool = False) -> str:
    """An HTML table in a horizontally scrolling box; the first ``left`` columns left-aligned,
    the last one a wrapping note column when ``note``."""
    last = len(header) - 1
    cls = lambda i: ' class="note"' if note and i == last else (' class="l"' if i < left else "")  # noqa: E731
    out = ['<div class="scroll"><table><tr>' + "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(header)) + "</tr>"]
    for k, row in enumerate(rows):
        rc = f' class="{classes[k]}"' if classes and classes[k] else ""
        out.append(f"<tr{rc}>" + "".join(f"<td{cls(i)}>{html.escape(str(v))}</td>" for i, v in enumerate(row)) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _ci(low, high, digits=2) -> str:
    return "no CI" if not (np.isfinite(low) and np.isfinite(high)) else f"[{fmt(low, digits)}, {fmt(high, digits)}]"


def _headline_table(data: ReportInput) -> str:
    """eval_ppl per cell; the bootstrap and Wilcoxon columns only where some cell has them (the
    raw p (t) is in the full table below), so the table and its notes fit a 1280 px window."""
    rows = headline_rows(data.cell_stats)
    boot = np.isfinite(rows["boot_low"].to_numpy(dtype=float)).any()
    wilcoxon = np.isfinite(rows["p_wilcoxon"].to_numpy(dtype=float)).any()
    body, classes = [], []
    for r in rows.itertuples(index=False):
        body.append([
            r.label, fmt(r.peak), r.n_seeds, fmt(r.mean), _ci(r.ci_low, r.ci_high),
            *([_ci(r.boot_low, r.boot_high)] if boot else []),
            "base" if r.is_baseline else fmt(r.ratio_mean, 3),
            "" if r.is_baseline else _ci(r.ratio_ci_low, r.ratio_ci_high, 3),
            fmt_p(r.p_holm), *([fmt_p(r.p_wilcoxon)] if wilcoxon else []), fmt(r.d_z), r.note])
        classes.append("base" if r.is_baseline else "")
    header = ["cell", "peak", "seeds", "eval ppl", "95% t CI", *(["bootstrap CI"] if boot else []), "ratio",
              "ratio 95% CI", "p Holm", *(["p Wilcoxon"] if wilcoxon else []), "d_z", "note"]
    return _table(header, body, classes, note=True) + _seeds_line(rows)


def _seeds_line(rows: pd.DataFrame) -> str:
    """One line on what the seed count can show: a warning under 3 paired seeds and the seeds
    a paired t-test would need to detect a 2% ratio at 80% power (median over cells)."""
    comp = rows[~rows["is_baseline"]]
    if comp.empty:
        return ""
    paired = int(comp["n_paired"].fillna(0).max())
    need = comp["seeds_2pct"].astype(float)
    need = need[np.isfinite(need)]
    parts = []
    if paired < MIN_SEEDS_FOR_RANKS:
        parts.append(f"<b>Only {paired} paired seed(s)</b>: no bootstrap interval or Wilcoxon test is given, "
                     "and the t intervals, p-values and d_z of so few seeds are fragile; read them as a sketch.")
    if len(need):
        parts.append(f"From the observed spread of the per-seed ratios (median over cells), about "
                     f"<b>{np.median(need):.0f} paired seeds</b> would detect a 2% ratio at 80% power "
                     "(two-sided paired t-test, alpha 0.05).")
    elif paired < 2:
        parts.append("With one seed the spread is unknown, so the seeds needed cannot be estimated.")
    return '<p class="muted">' + " ".join(parts) + "</p>" if parts else ""


def _paper_table(data: ReportInput) -> str:
    stats_ = data.cell_stats[data.cell_stats["metric"] == "eval_ppl"]

    def ours(mask, what):
        r = stats_[mask]
        if r.empty or not np.isfinite(r["ratio_mean"].iloc[0]):
            return [f"not in this sweep ({what})", "-"]
        r = r.iloc[0]
        return [f"{label(r.configuration, r.schedule, r.comparator)}: {fmt(r.ratio_mean, 3)}x "
                f"{_ci(r.ratio_ci_low, r.ratio_ci_high, 3)}", fmt(r["mean"])]

    quintic = (stats_["configuration"] == data.focus) & (stats_["schedule"] == QUINTIC)
    strict_name = UNIFORM_STRICT if UNIFORM_STRICT in set(stats_["comparator"].dropna()) else None
    strict = stats_["comparator"] == strict_name if strict_name else np.zeros(len(stats_), bool)
    body = [["quintic schedule", f"{PAPER_V1['quintic_ratio']}x (ppl {PAPER_V1['quintic_ppl']})",
             *ours(quintic.to_numpy(dtype=bool), "quintic at the most localist configuration")],
            ["uniform (strict) localist", f"{PAPER_V1['uniform_ratio']}x (earlier uniform localist models)",
             *ours(np.asarray(strict, dtype=bool), f"{UNIFORM_STRICT} comparator")]]
    note = (f'<p class="muted">Paper: the v1 abstract of {CITATION}, quoted, not computed here. '
            'Ours: this sweep, ratio to the '
            f'baseline {html.escape(str(data.baseline))} of the same seed, mean and 95% t CI over seeds.</p>')
    return _table(["figure", "paper's v1 headline", "ours: ratio [95% CI]", "ours: eval ppl"], body,
                  ["paper", "paper"]) + note


def _join(v) -> str:
    if v is None or v == "":
        return "not recorded"
    one = lambda x: f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)  # noqa: E731
    return ", ".join(one(x) for x in v) if isinstance(v, list) else one(v)


def _provenance_section(data: ReportInput) -> str:
    p = data.provenance
    if p is None:
        return '<p class="nodata">No provenance record.</p>'
    m, d, t, n = p["model"], p["data"], p["train"], p["trials"]

    def parts(*pairs) -> str:  # "a 1, b 2" from the recorded values only
        shown = [text.format(_join(v)) for text, v in pairs if v not in (None, "", [])]
        return ", ".join(shown) or "not recorded"

    wall = p["wall_s"]
    items = [
        ("sweep", f"{p['sweep']} ({p['sweep_uri']})"), ("description", p["description"] or "none given"),
        ("model", parts(("{}", m["name"]), ("{} layers", m["n_layer"]), ("{} hidden", m["n_embd"]),
                        ("{} heads", m["n_head"]))),
        ("parameters", f"{m['n_params']:,}" if m["n_params"] else "not recorded"),
        ("corpus", parts(("{}", d["corpus"]), ("first {} characters", d["max_chars"]),
                         ("vocabulary {}", d["vocab_size"]))),
        ("tokens", f"{t['tokens_per_trial']:,} training tokens per trial" if t["tokens_per_trial"] else "not recorded"),
        ("training", parts(("{} steps", t["steps"]), ("batch {}", t["batch_size"]),
                           ("{} accumulation", t["grad_accum"]), ("{} workers", t.get("workers")),
                           ("global batch {} sequences", t.get("global_batch")), ("seq_len {}", d["seq_len"]))),
        *([("pretrained base", _pretrain_line(p["pretrain"]))] if p.get("pretrain") else []),
        ("seeds", _join(p["seeds"])),
        ("trials", f"{n['rows']} cell x seed rows run as {n['runs']} trials ({n['deduplicated']} deduplicated "
                   f"onto a shared run); {n['excluded']} excluded"),
        ("versions", parts(*((f"{k} {{}}", v) for k, v in p["versions"].items()))),
        ("code", p["git_commit"] or "no git commit available"),
        ("hardware", parts(("{}", p["devices"]), ("on {}", p["hosts"]))),
        ("wall time", f"{wall['total']:,.0f} s over all trials, longest trial {wall['longest_trial']:,.0f} s"
                      if wall["total"] is not None else "not recorded"),
    ]
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
    return f'<dl class="prov">{body}</dl><p class="muted">Also {layout.provenance_file(_SWEEP)}.</p>'


def _pretrain_line(rec: dict) -> str:
    """The base every trial fine-tuned: its key, shape, corpus, steps and held-out loss per seed."""
    c = rec.get("config") or {}
    m, d, t = c.get("model", {}), c.get("data", {}), c.get("train", {})
    bases = "; ".join(f"seed {b['seed']}: {b['steps']} steps, eval loss {fmt(b['eval_loss'], 3)} "
                      f"(ppl {fmt(b['eval_ppl'])})" for b in rec.get("bases", []))
    return (f"{rec.get('key')}: {m.get('n_layer')} layers x {m.get('n_embd')} hidden, pretrained without locality on "
            f"{d.get('corpus')} (seq_len {d.get('seq_len')}, vocabulary {d.get('vocab_size')}, batch "
            f"{t.get('batch_size')}, lr {t.get('lr')}); {bases}; in {rec.get('folder')}"
            + (" (reused)" if rec.get("reused") else ""))


def _excluded_section(data: ReportInput) -> str:
    ex = data.excluded
    total = len(data.trials)
    counts = data.trials["status"].value_counts().sort_index()
    parts = [f"<p>{total} trial rows ({data.trials['run_trial_id'].nunique()} distinct runs): "
             + ", ".join(f"{html.escape(str(k))} {v}" for k, v in counts.items()) + ".</p>"]
    if ex.empty:
        parts.append("<p>No trial was excluded.</p>")
        return "\n".join(parts)
    reasons = ex["reason"].value_counts().sort_index()
    parts.append("<p>Excluded from every mean: " + ", ".join(
        f"<b>{html.escape(str(k))}</b> {v}" for k, v in reasons.items()) + ".</p>")
    rows = [[r.trial_id, label(r.configuration, r.schedule, r.comparator), r.seed, r.reason,
             "" if is_null(r.error) else str(r.error)[:200]] for r in ex.itertuples(index=False)]
    parts.append(_table(["trial", "cell", "seed", "reason", "error"], rows, left=5))
    return "\n".join(parts)


def _all_cells_table(data: ReportInput) -> str:
    cols = ["n_seeds", "mean", "std", "sem", "ci_low", "ci_high", "boot_low", "boot_high", "mean_diff",
            "ratio_mean", "ratio_ci_low", "ratio_ci_high", "p_ttest", "p_wilcoxon", "p_holm", "d_z", "seeds_2pct"]
    rows = []
    for r in data.cell_stats.to_dict("records"):
        vals = [label(r["configuration"], r["schedule"], r["comparator"]), r["metric"]]
        for c in cols:
            v = r[c]
            vals.append(str(v) if c == "n_seeds" else (fmt_p(v) if c.startswith("p_") else
                                                       fmt(v, 0 if c == "seeds_2pct" else 4)))
        rows.append(vals + [r["note"]])
    return _table(["cell", "metric", *cols, "note"], rows, left=2, note=True)


def _one_base(rows: pd.DataFrame) -> bool:
    """Every step-0 ratio exactly the same over its seeds (zero-width interval from 2 seeds on)."""
    many = rows[rows["zs_n"].fillna(0).astype(int) >= 2]
    return bool(len(many)) and bool(np.isclose(many["zs_low"], many["zs_high"], rtol=0, atol=1e-12).all())


def _recovery_section(data: ReportInput) -> str:
    """Zero-shot against fine-tuned cost of each cell's locality, by position in the block."""
    rows = recovery_rows(data.cell_stats)
    if rows.empty:
        return (f'<p class="nodata">No step-0 evaluations in {_TRIALS_FILE} (train.eval_at_start off, or '
                "trials from before they were recorded).</p>")
    body = [[r.label, r.group, f"{fmt(r.zs_ratio, 3)}x", _ci(r.zs_low, r.zs_high, 3), fmt_p(r.zs_p),
             f"{fmt(r.ft_ratio, 3)}x", _ci(r.ft_low, r.ft_high, 3), fmt_p(r.ft_p),
             "-" if not np.isfinite(r.recovered) else f"{100 * r.recovered:.0f}%"]
            for r in rows.itertuples(index=False)]
    table = _table(["cell", "tokens", "step 0 ratio", "95% CI", "p Holm", "fine-tuned ratio", "95% CI",
                    "p Holm", "recovered"], body, left=2)
    note = ('<p class="muted">Perplexity ratio to the baseline of the same seed = exp of the mean paired '
            "held-out loss difference, with its 95% t CI and the paired t-test's p, Holm-adjusted over the "
            "cells of each row kind. Step 0 is the starting model (the pretrained base) under the cell's "
            "locality before any update; the baseline's step 0 is the same base without locality. "
            "Recovered: the share of the step-0 excess that fine-tuning removed (shown from a 1.005x "
            "step-0 ratio; negative: fine-tuning widened the gap)."
            + (" Step 0 is the same at every seed here (the seeds share one base, and evaluation draws no "
               "random numbers), so its ratio has no spread and no test: pretrain one base per seed "
               "(pretrain.per_seed) for that." if _one_base(rows) else "") + "</p>")
    if len(rows) > 48:
        return f"<details><summary>{len(rows)} rows</summary>{table}</details>{note}"
    return table + note


def _paper_section(data: ReportInput) -> str:
    scale = data.scale
    statement = f'<p class="scale">{html.escape(scale["statement"])}</p>'
    return statement + (_paper_table(data) if scale["comparable"] else "")


def _figure_html(name: str, pngs: dict[str, bytes], caption: str, missing: str) -> str:
    """The figure ``name`` embedded with its caption, or why it has no data."""
    png = pngs.get(name)
    if png is None:
        return f'<p class="nodata">No data for this figure: {html.escape(missing)}.</p>'
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'
            f'<figcaption class="muted">{html.escape(caption)} (also {html.escape(name)})</figcaption></figure>')


def render(data: ReportInput) -> tuple[str, dict[str, bytes]]:
    """The HTML text and the PNG figures by file name (absent figures are left out)."""
    pngs = figures.draw(data)
    notes = data.notes
    sweep = html.escape(str(data.sweep_uri))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        f"<h1>Progressive localisation sweep report</h1>"
        f'<p class="muted">Sweep <code>{sweep}</code>; baseline <b>{html.escape(str(data.baseline))}</b>; '
        f"generated {stamp}. Statistics over seeds: mean, 95% Student t CI, bootstrap (BCa) CI; "
        "ratio = eval perplexity / baseline of the same seed; paired t-test and Wilcoxon signed-rank "
        "on the seeds both sides have, Holm-adjusted across all comparisons of a metric; "
        "d_z = mean difference / its standard deviation. With a handful of seeds the bootstrap "
        "interval is too narrow; read the t interval first. Under 3 paired seeds there is no "
        "bootstrap interval and no Wilcoxon test.</p>",
        (f'<p><b>PARTIAL RESULTS: {html.escape(notes["partial"])}</b></p>' if notes.get("partial") else ""),
        "<h2>What was run</h2>", _provenance_section(data),
        "<h3>Scale and the paper's headline</h3>", _paper_section(data),
        *([f"<h2>Search</h2><p>{html.escape(notes['search'])}</p>"] if notes.get("search") else []),
        "<h2>Headline: eval perplexity</h2>", _headline_table(data),
        "<h2>Perplexity ratio to the baseline</h2>",
        _figure_html(figures.RATIO_HEATMAP, pngs,
                     "Mean ratio over seeds per configuration and schedule; 'base' is the baseline.",
                     "no completed comparison with the baseline"),
        _figure_html(figures.RATIO_BY_PEAK, pngs,
                     "Ratio against peak locality per schedule with 95% t CIs; our comparators dashed"
                     + ("; the paper's v1 figures as a note in the corner, not on the axis."
                        if data.scale["comparable"] else " (the paper's figures are left out: see Scale)."),
                     "no completed comparison with the baseline"),
        "<h2>Where locality costs: held-out loss by position in the block</h2>",
        _figure_html(figures.POSITIONS, pngs,
                     "Perplexity ratio to the baseline of the same seed for tokens predicted at the first "
                     "position of their block, positions 2-4 and 5+ (window partitioner: by the number of "
                     "earlier keys in the band); exp of the mean paired loss difference with its 95% t CI; hollow "
                     "markers: the same at step 0, before fine-tuning (where recorded). "
                     "At small scale the mean hides the cost of locality, which sits at block starts.",
                     f"no per-position eval losses in {_TRIALS_FILE} (trials from before they were recorded)"),
        "<h2>Zero-shot and fine-tuned: what fine-tuning recovers</h2>", _recovery_section(data),
        f"<h2>Per-layer attention ({html.escape(str(data.focus))} against the baseline)</h2>",
        _figure_html(figures.LAYERS, pngs,
                     "Lambda, attention entropy and in-block mass against depth at each trial's last "
                     f"evaluation, one line per schedule, 95% t CI bands over seeds (from {MIN_SEEDS_FOR_RANKS} seeds).",
                     notes.get("layers", "no per-layer rows for completed trials")),
        "<h2>Training and eval curves</h2>",
        _figure_html(figures.CURVES, pngs,
                     f"Mean over seeds with 95% t CI bands (from {MIN_SEEDS_FOR_RANKS} seeds).",
                     notes.get("steps", "no step rows for completed trials")),
        "<h2>Attention patterns (first and last layer)</h2>",
        _figure_html(figures.ATTENTION, pngs,
                     "One sample passage saved at the end of each trial; baseline, quintic and uniform strict.",
                     notes.get("attention", "no attention sample for the picked trials")),
        "<h2>Diverged, errored and missing trials</h2>", _excluded_section(data),
        "<h2>All cell statistics</h2>",
        f"<details><summary>every metric, every cell (also {layout.summary_table(_SWEEP, 'cells')})</summary>"
        + _all_cells_table(data) + "</details>",
    ]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Sweep report: {sweep}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    return page, pngs


def write_report(data: ReportInput) -> str:
    """Write report.html and its PNGs into the sweep's summary folder; a figure without data now
    is removed, so none survives from an older run. Returns the URI of report.html."""
    page, pngs = render(data)
    for name in layout.REPORT_FIGURES:
        uri = layout.figure_file(data.sweep_uri, name)
        if name in pngs:
            lio.write_bytes(uri, pngs[name])
        elif lio.exists(uri):
            lio.delete(uri)
    uri = layout.report_file(data.sweep_uri)
    lio.write_text(uri, page)
    return uri
