"""The sweep report: one self-contained ``report.html`` (figures embedded) plus the same PNGs.

Built by ``orchestrator.aggregate.aggregate`` from the summary tables it has just computed; every
section says so when it has no data instead of failing, so small sweeps (one seed, one
schedule, no comparators) still get a report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from localist import io as lio  # noqa: E402
from orchestrator.aggregate import KEYS, _fmt, _fmt_p, _null, headline_rows, label, schedule_order  # noqa: E402

# The paper's v1 abstract (Diederich 2025, arXiv 2511.18375): shown beside ours, never computed.
PAPER_V1 = {"quintic_ppl": 14.64, "quintic_ratio": 1.89, "uniform_ratio": 6.6}
FIGURES = ("ratio_heatmap.png", "ratio_by_peak.png", "layers.png", "curves.png", "attention.png")
UNIFORM_STRICT = "uniform-strict"
QUINTIC = "quintic"
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.base td{background:#f7f7ff}
.paper{background:#fff8e6}.muted{color:#666;font-size:.9em}img{max-width:100%;display:block;margin:.5em 0}
.nodata{color:#a33;font-style:italic}
"""


@dataclass
class ReportInput:
    sweep_uri: str
    baseline: str
    trials: pd.DataFrame
    cells: pd.DataFrame
    cell_stats: pd.DataFrame
    layers: pd.DataFrame
    curves: pd.DataFrame
    excluded: pd.DataFrame
    attention: pd.DataFrame | None = None
    attention_picks: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# what to show


def focus_configuration(cells: pd.DataFrame, baseline: str):
    """The most localist grid configuration (highest peak; else last in order), baseline if alone."""
    grid = cells[cells["comparator"].isna() & ~cells["is_baseline"]]
    if grid.empty:
        return baseline
    peaks = grid.groupby("configuration", sort=False)["peak"].first()
    if np.isfinite(peaks.to_numpy(dtype=float)).any():
        return peaks.idxmax()
    return grid["configuration"].iloc[-1]


def _line_specs(cells: pd.DataFrame, baseline: str) -> list[dict]:
    """The lines of the per-layer and curve figures: each schedule of the focus configuration,
    the baseline once, and every comparator."""
    focus = focus_configuration(cells, baseline)
    specs = []
    cmap = plt.get_cmap("viridis")
    grid = cells[cells["comparator"].isna()]
    scheds = [s for s in schedule_order(grid["schedule"].unique())]
    if focus != baseline:
        mine = grid[grid["configuration"] == focus]
        present = [s for s in scheds if s in set(mine["schedule"])]
        for i, s in enumerate(present):
            specs.append({"label": f"{focus}/{s}", "key": (focus, s, None),
                          "style": {"color": cmap(i / max(len(present) - 1, 1) * 0.9), "lw": 1.8}})
    base = grid[grid["is_baseline"]]
    if not base.empty:
        s = base["schedule"].iloc[0]
        specs.append({"label": f"{baseline} (baseline)", "key": (baseline, s, None),
                      "style": {"color": "black", "ls": "--", "lw": 1.5}})
    comps = cells[~cells["comparator"].isna()]["comparator"]
    for i, c in enumerate(comps):
        specs.append({"label": str(c), "key": (None, None, c),
                      "style": {"color": plt.get_cmap("tab10")(3 + i), "ls": ":", "lw": 1.8}})
    return specs


def _select(df: pd.DataFrame, key: tuple) -> pd.Series:
    mask = np.ones(len(df), dtype=bool)
    for col, value in zip(KEYS, key):
        col_null = df[col].isna().to_numpy(dtype=bool)
        mask &= col_null if value is None else (~col_null & (df[col].astype(object) == value).to_numpy(dtype=bool))
    return mask


def pick_attention_trials(trials: pd.DataFrame, cells: pd.DataFrame, baseline: str) -> list[dict]:
    """The trials whose attention sample is shown: baseline, quintic (focus configuration) and
    uniform strict, each at its lowest completed seed; fallbacks are labelled as such."""
    done = trials[trials["status"] == "completed"]
    if done.empty:
        done = trials
    grid = done[done["comparator"].isna()]
    comps = done[~done["comparator"].isna()]
    focus = focus_configuration(cells, baseline)
    order = schedule_order(trials["schedule"].unique())
    rank = {s: i for i, s in enumerate(order)}
    wanted = []
    base = grid[grid["configuration"] == baseline]
    wanted.append(("baseline", f"baseline ({baseline})", base))
    if focus != baseline:
        mine = grid[grid["configuration"] == focus]
        steep = [s for s in order if s != "uniform" and s in set(mine["schedule"])]
        sched = QUINTIC if QUINTIC in steep else (steep[-1] if steep else None)
        if sched is not None:
            name = f"{focus}/{sched}" + ("" if sched == QUINTIC else " (no quintic in this sweep)")
            wanted.append((QUINTIC, name, mine[mine["schedule"] == sched]))
    strict = comps[comps["comparator"] == UNIFORM_STRICT]
    if strict.empty:
        strict = comps[comps["comparator"].astype(str).str.contains("uniform")]
    if strict.empty and focus != baseline:
        strict = grid[(grid["configuration"] == focus) & (grid["schedule"] == "uniform")]
    if not strict.empty:
        wanted.append((UNIFORM_STRICT, label(*strict[list(KEYS)].iloc[0]), strict))
    picks = []
    for role, name, rows in wanted:
        if rows.empty:
            continue
        rows = rows.assign(_r=rows["schedule"].map(lambda s: rank.get(s, len(rank))))
        row = rows.sort_values(["seed", "_r", "trial_id"]).iloc[0]
        picks.append({"role": role, "label": f"{name}, seed {row['seed']}",
                      "trial_id": row["trial_id"], "run_trial_id": row["run_trial_id"]})
    return picks


# --------------------------------------------------------------------------------------------
# figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _band(ax, x, part: pd.DataFrame, style: dict, name: str) -> None:
    ax.plot(x, part["mean"], label=name, **style)
    low, high = part["ci_low"].to_numpy(dtype=float), part["ci_high"].to_numpy(dtype=float)
    ok = np.isfinite(low) & np.isfinite(high)
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], low[ok], high[ok], color=style.get("color"), alpha=0.18, lw=0)


def fig_ratio_heatmap(data: ReportInput):
    rows = data.cell_stats[(data.cell_stats["metric"] == "eval_ppl") & data.cell_stats["comparator"].isna()]
    if rows.empty or not np.isfinite(rows["ratio_mean"].to_numpy(dtype=float)).any():
        return None
    configs = list(dict.fromkeys(rows["configuration"]))
    scheds = schedule_order(rows["schedule"].unique())
    grid = np.full((len(configs), len(scheds)), np.nan)
    text = [["" for _ in scheds] for _ in configs]
    for r in rows.itertuples(index=False):
        if _null(r.schedule):
            continue
        i, j = configs.index(r.configuration), scheds.index(r.schedule)
        value = 1.0 if r.is_baseline else r.ratio_mean
        grid[i, j] = value
        single = _null(r.n_paired) or int(r.n_paired) < 2
        text[i][j] = "base" if r.is_baseline else _fmt(value) + ("\nn<2" if single else "")
    fig, ax = plt.subplots(figsize=(1.3 * len(scheds) + 2.5, 0.55 * len(configs) + 1.8))
    im = ax.imshow(grid, cmap="magma_r", aspect="auto", vmin=min(1.0, np.nanmin(grid)))
    for i in range(len(configs)):
        for j in range(len(scheds)):
            if text[i][j]:
                dark = np.isfinite(grid[i, j]) and grid[i, j] > np.nanmin(grid) + 0.6 * (np.nanmax(grid) - np.nanmin(grid))
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(scheds)), scheds)
    ax.set_yticks(range(len(configs)), configs)
    ax.set_xlabel("schedule")
    ax.set_ylabel("configuration")
    ax.set_title("eval perplexity / baseline of the same seed (mean over seeds)")
    fig.colorbar(im, ax=ax, label="perplexity ratio")
    return fig


def fig_ratio_by_peak(data: ReportInput):
    stats_ = data.cell_stats[data.cell_stats["metric"] == "eval_ppl"]
    grid = stats_[stats_["comparator"].isna()]
    comps = stats_[~stats_["comparator"].isna()]
    if not np.isfinite(stats_["ratio_mean"].to_numpy(dtype=float)).any():
        return None
    configs = list(dict.fromkeys(grid["configuration"]))
    peaks = grid.groupby("configuration", sort=False)["peak"].first()
    use_peak = np.isfinite(peaks.to_numpy(dtype=float)).all() and peaks.is_unique
    xpos = {c: (float(peaks[c]) if use_peak else i) for i, c in enumerate(configs)}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    scheds = schedule_order(grid["schedule"].unique())
    for k, s in enumerate(scheds):
        part = grid[grid["schedule"] == s]
        x = [xpos[c] for c in part["configuration"]]
        y = np.where(part["is_baseline"], 1.0, part["ratio_mean"].astype(float))
        lo = np.where(part["is_baseline"], 1.0, part["ratio_ci_low"].astype(float))
        hi = np.where(part["is_baseline"], 1.0, part["ratio_ci_high"].astype(float))
        err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=cmap(k / max(len(scheds) - 1, 1) * 0.9), label=s)
    for i, r in enumerate(comps.itertuples(index=False)):
        if np.isfinite(r.ratio_mean):
            ax.axhline(r.ratio_mean, color=plt.get_cmap("tab10")(3 + i), ls="--", lw=1.2,
                       label=f"ours: {r.comparator} {r.ratio_mean:.2f}x")
    ax.axhline(PAPER_V1["quintic_ratio"], color="0.5", ls=":", lw=1.2,
               label=f"paper v1: quintic {PAPER_V1['quintic_ratio']}x")
    ax.axhline(PAPER_V1["uniform_ratio"], color="0.3", ls=":", lw=1.2,
               label=f"paper v1: uniform localist {PAPER_V1['uniform_ratio']}x")
    ax.set_yscale("log")
    ax.set_ylabel("perplexity ratio to baseline (log)")
    if use_peak:
        ax.set_xlabel("peak locality lambda_max")
    else:
        ax.set_xticks(range(len(configs)), configs)
        ax.set_xlabel("configuration")
    ax.set_title("perplexity ratio (mean, 95% t CI over paired seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _spec_panels(df: pd.DataFrame, specs: list[dict], panels: list[tuple], x: str, title: str):
    """One panel per (filter dict, y label, log y); a line with a CI band per spec."""
    drawn = False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (where, ylabel, logy) in zip(axes[0], panels):
        sub = df
        for col, value in where.items():
            sub = sub[sub[col] == value]
        for spec in specs:
            part = sub[_select(sub, spec["key"])].sort_values(x)
            if part.empty:
                continue
            _band(ax, part[x].to_numpy(), part, spec["style"], spec["label"])
            drawn = True
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fig_layers(data: ReportInput):
    if data.layers.empty:
        return None
    present = set(data.layers["quantity"])
    panels = [({"quantity": q}, ylabel, False) for q, ylabel in (
        ("lambda", "locality lambda"), ("entropy_bits", "attention entropy (bits)"),
        ("in_block_mass", "in-block attention mass")) if q in present]
    return _spec_panels(data.layers, _line_specs(data.cells, data.baseline), panels, "layer",
                        "per-layer attention at the last evaluation (mean, 95% CI band over seeds)")


def fig_curves(data: ReportInput):
    if data.curves.empty:
        return None
    panels = [({"split": "train", "metric": "loss"}, "training loss", False),
              ({"split": "eval", "metric": "ppl"}, "eval perplexity (log)", True)]
    return _spec_panels(data.curves, _line_specs(data.cells, data.baseline), panels, "step",
                        "training and eval curves (mean, 95% CI band over seeds)")


def fig_attention(data: ReportInput):
    att = data.attention
    if att is None or att.empty or not data.attention_picks:
        return None
    shown = []
    for pick in data.attention_picks:
        rows = att[att["trial_id"] == pick["trial_id"]]
        if rows.empty and "run_trial_id" in att:
            rows = att[att["run_trial_id"] == pick["run_trial_id"]]
            rows = rows[rows["trial_id"] == rows["trial_id"].iloc[0]] if not rows.empty else rows
        if not rows.empty:
            shown.append((pick, rows))
    if not shown:
        return None
    layers = sorted(set().union(*(set(r["layer"]) for _, r in shown)))
    layers = [layers[0], layers[-1]] if len(layers) > 1 else layers
    fig, axes = plt.subplots(len(shown), len(layers), figsize=(4.4 * len(layers), 4.0 * len(shown)), squeeze=False)
    for i, (pick, rows) in enumerate(shown):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            part = rows[rows["layer"] == layer]
            if part.empty:
                ax.set_axis_off()
                ax.set_title(f"{pick['label']}\nlayer {layer}: no data", fontsize=8)
                continue
            n = int(max(part["query"].max(), part["key"].max())) + 1
            mat = np.full((n, n), np.nan)
            mat[part["query"].to_numpy(dtype=int), part["key"].to_numpy(dtype=int)] = part["weight"].to_numpy(dtype=float)
            ax.imshow(np.ma.masked_invalid(mat), cmap="Blues", interpolation="nearest",
                      norm=PowerNorm(0.4, vmin=0.0, vmax=max(float(np.nanmax(mat)), 1e-12)))
            if "token" in part and n <= 40:
                tokens = part.drop_duplicates("key").set_index("key")["token"]
                ticks = [str(tokens.get(k, "")).replace("\n", "\\n")[:10] for k in range(n)]
                ax.set_xticks(range(n), ticks, rotation=90, fontsize=6)
                ax.set_yticks(range(n), ticks, fontsize=6)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
            ax.set_title(f"{pick['label']}\nlayer {layer}", fontsize=9)
    fig.suptitle("attention on one sample passage (mean over heads)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# HTML


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None, left: int = 1) -> str:
    cls = lambda i: ' class="l"' if i < left else ""  # noqa: E731
    out = ["<table><tr>" + "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(header)) + "</tr>"]
    for k, row in enumerate(rows):
        rc = f' class="{classes[k]}"' if classes and classes[k] else ""
        out.append(f"<tr{rc}>" + "".join(f"<td{cls(i)}>{html.escape(str(v))}</td>" for i, v in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _ci(low, high, digits=2) -> str:
    return "no CI" if not (np.isfinite(low) and np.isfinite(high)) else f"[{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _headline_table(data: ReportInput) -> str:
    rows = headline_rows(data.cell_stats)
    body, classes = [], []
    for r in rows.itertuples(index=False):
        body.append([
            r.label, _fmt(r.peak), r.n_seeds, _fmt(r.mean), _ci(r.ci_low, r.ci_high), _ci(r.boot_low, r.boot_high),
            "1 (baseline)" if r.is_baseline else _fmt(r.ratio_mean, 3),
            "" if r.is_baseline else _ci(r.ratio_ci_low, r.ratio_ci_high, 3),
            _fmt_p(r.p_ttest), _fmt_p(r.p_holm), _fmt_p(r.p_wilcoxon), _fmt(r.d_z), r.note])
        classes.append("base" if r.is_baseline else "")
    header = ["cell", "peak", "seeds", "eval ppl", "95% t CI", "bootstrap CI", "ratio", "ratio 95% CI",
              "p (t)", "p (t, Holm)", "p (Wilcoxon)", "d_z", "note"]
    return _table(header, body, classes)


def _paper_table(data: ReportInput) -> str:
    stats_ = data.cell_stats[data.cell_stats["metric"] == "eval_ppl"]
    focus = focus_configuration(data.cells, data.baseline)

    def ours(mask, what):
        r = stats_[mask]
        if r.empty or not np.isfinite(r["ratio_mean"].iloc[0]):
            return [f"not in this sweep ({what})", "-"]
        r = r.iloc[0]
        return [f"{label(r.configuration, r.schedule, r.comparator)}: {_fmt(r.ratio_mean)}x "
                f"{_ci(r.ratio_ci_low, r.ratio_ci_high)}", _fmt(r['mean'])]

    quintic = (stats_["configuration"] == focus) & (stats_["schedule"] == QUINTIC)
    strict_name = UNIFORM_STRICT if UNIFORM_STRICT in set(stats_["comparator"].dropna()) else None
    strict = stats_["comparator"] == strict_name if strict_name else np.zeros(len(stats_), bool)
    body = [["quintic schedule", f"{PAPER_V1['quintic_ratio']}x (ppl {PAPER_V1['quintic_ppl']})",
             *ours(quintic.to_numpy(dtype=bool), "quintic at the most localist configuration")],
            ["uniform (strict) localist", f"{PAPER_V1['uniform_ratio']}x (earlier uniform localist models)",
             *ours(np.asarray(strict, dtype=bool), "uniform-strict comparator")]]
    note = ('<p class="muted">Paper: the v1 abstract of Diederich, "Progressive Localisation in Localist '
            'LLMs" (arXiv 2511.18375), quoted, not computed here. Ours: this sweep, ratio to the '
            f'baseline {html.escape(str(data.baseline))} of the same seed, mean and 95% t CI over seeds.</p>')
    return _table(["figure", "paper's v1 headline", "ours: ratio [95% CI]", "ours: eval ppl"], body,
                  ["paper", "paper"]) + note


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
             "" if _null(r.error) else str(r.error)[:200]] for r in ex.itertuples(index=False)]
    parts.append(_table(["trial", "cell", "seed", "reason", "error"], rows, left=5))
    return "\n".join(parts)


def _all_cells_table(data: ReportInput) -> str:
    cols = ["n_seeds", "mean", "std", "sem", "ci_low", "ci_high", "boot_low", "boot_high", "mean_diff",
            "ratio_mean", "ratio_ci_low", "ratio_ci_high", "p_ttest", "p_wilcoxon", "p_holm", "d_z"]
    rows = []
    for r in data.cell_stats.to_dict("records"):
        vals = [label(r["configuration"], r["schedule"], r["comparator"]), r["metric"]]
        for c in cols:
            v = r[c]
            vals.append(str(v) if c == "n_seeds" else (_fmt_p(v) if c.startswith("p_") else _fmt(v, 4)))
        rows.append(vals + [r["note"]])
    return _table(["cell", "metric", *cols, "note"], rows, left=2)


def _figure_html(name: str, png: bytes | None, caption: str, missing: str) -> str:
    if png is None:
        return f'<p class="nodata">No data for this figure: {html.escape(missing)}.</p>'
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'
            f'<figcaption class="muted">{html.escape(caption)} (also {html.escape(name)})</figcaption></figure>')


def render(data: ReportInput) -> tuple[str, dict[str, bytes]]:
    """The HTML text and the PNG figures by file name (absent figures are left out)."""
    pngs: dict[str, bytes] = {}
    for name, make in zip(FIGURES, (fig_ratio_heatmap, fig_ratio_by_peak, fig_layers, fig_curves, fig_attention)):
        fig = make(data)
        if fig is not None:
            pngs[name] = _png(fig)
    notes = data.notes
    focus = focus_configuration(data.cells, data.baseline)
    sweep = html.escape(str(data.sweep_uri))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        f"<h1>Progressive localisation sweep report</h1>"
        f'<p class="muted">Sweep <code>{sweep}</code>; baseline <b>{html.escape(str(data.baseline))}</b>; '
        f"generated {stamp}. Statistics over seeds: mean, 95% Student t CI, bootstrap (BCa) CI; "
        "ratio = eval perplexity / baseline of the same seed; paired t-test and Wilcoxon signed-rank "
        "on the seeds both sides have, Holm-adjusted across all comparisons of a metric; "
        "d_z = mean difference / its standard deviation. With a handful of seeds the bootstrap "
        "interval is too narrow; read the t interval first.</p>",
        *([f"<h2>Search</h2><p>{html.escape(notes['search'])}</p>"] if notes.get("search") else []),
        "<h2>Headline: eval perplexity</h2>", _headline_table(data),
        "<h3>The paper's headline beside ours</h3>", _paper_table(data),
        "<h2>Perplexity ratio to the baseline</h2>",
        _figure_html("ratio_heatmap.png", pngs.get("ratio_heatmap.png"),
                     "Mean ratio over seeds per configuration and schedule; 'base' is the baseline.",
                     "no completed comparison with the baseline"),
        _figure_html("ratio_by_peak.png", pngs.get("ratio_by_peak.png"),
                     "Ratio against peak locality per schedule with 95% t CIs; our comparators dashed, "
                     "the paper's v1 figures dotted and labelled as the paper's.",
                     "no completed comparison with the baseline"),
        f"<h2>Per-layer attention ({html.escape(str(focus))} against the baseline)</h2>",
        _figure_html("layers.png", pngs.get("layers.png"),
                     "Lambda, attention entropy and in-block mass against depth at each trial's last "
                     "evaluation, one line per schedule, 95% CI bands over seeds.",
                     notes.get("layers", "no per-layer rows for completed trials")),
        "<h2>Training and eval curves</h2>",
        _figure_html("curves.png", pngs.get("curves.png"),
                     "Mean over seeds with 95% CI bands.",
                     notes.get("steps", "no step rows for completed trials")),
        "<h2>Attention patterns (first and last layer)</h2>",
        _figure_html("attention.png", pngs.get("attention.png"),
                     "One sample passage saved at the end of each trial; baseline, quintic and uniform strict.",
                     notes.get("attention", "no attention sample for the picked trials")),
        "<h2>Diverged, errored and missing trials</h2>", _excluded_section(data),
        "<h2>All cell statistics</h2>",
        "<details><summary>eval_ppl and eval_loss, every cell (also summary/cells.parquet)</summary>"
        + _all_cells_table(data) + "</details>",
    ]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Sweep report: {sweep}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    return page, pngs


def write_report(summary_uri: str, data: ReportInput) -> str:
    """Write report.html and its PNGs under ``summary_uri``; stale PNGs are removed. Returns the URI."""
    page, pngs = render(data)
    for name in FIGURES:
        uri = lio.join(summary_uri, name)
        if name in pngs:
            lio.write_bytes(uri, pngs[name])
        elif lio.exists(uri):
            lio.delete(uri)
    uri = lio.join(summary_uri, "report.html")
    lio.write_text(uri, page)
    return uri
