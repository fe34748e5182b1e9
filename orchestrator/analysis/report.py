"""The sweep report: one self-contained ``report.html`` (figures embedded) plus the same PNGs.

Built by ``orchestrator.analysis.aggregate.aggregate`` from the summary tables it has just computed; every
section says so when it has no data instead of failing, so small sweeps (one seed, one
schedule, no comparators) still get a report.

It opens with what was run (``orchestrator.analysis.provenance``) and the scale gap to GPT-2 small; the
paper's headline figures appear only beside that statement and only when the run is not far
smaller (``provenance.COMPARABLE_FRACTION``). Figures are drawn at their display size (PNG at 100
dpi, at most 10.5 inches wide, so 1:1 in the 1100 px page) with no text under 9 pt; ratio colour
maps are centred on 1.0 with a symmetric range of at least +-5% (``ratio_norm``).
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
from matplotlib.colors import PowerNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from localist import io as lio  # noqa: E402
from orchestrator.analysis import provenance as prov_mod  # noqa: E402
from orchestrator.analysis.stats import MIN_SEEDS_FOR_RANKS  # noqa: E402
from orchestrator.analysis.aggregate import (KEYS, POSITION_METRICS, REPORT_FILES, _fmt, _fmt_p, _null,  # noqa: E402
                                    headline_rows, label, schedule_order)

# The paper's v1 abstract (Diederich 2025, arXiv 2511.18375): shown beside ours, never computed.
PAPER_V1 = {"quintic_ppl": 14.64, "quintic_ratio": 1.89, "uniform_ratio": 6.6}
FIGURES = tuple(f for f in REPORT_FILES if f.endswith(".png"))
MIN_RATIO_HALF_RANGE = 0.05  # ratio colour maps span at least 0.95-1.05
FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 11}
POSITION_LABELS = {"eval_loss_pos1": "first token of its block", "eval_loss_pos2_4": "positions 2-4",
                   "eval_loss_pos5p": "positions 5+"}
UNIFORM_STRICT = "uniform-strict"
QUINTIC = "quintic"
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
    provenance: dict | None = None


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
    if "n_seeds" in part:  # a t band from two seeds (t = 12.7) hides every line under it
        ok &= part["n_seeds"].to_numpy(dtype=float) >= MIN_SEEDS_FOR_RANKS
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], low[ok], high[ok], color=style.get("color"), alpha=0.18, lw=0)


def ratio_norm(values) -> TwoSlopeNorm:
    """Diverging colour scale centred on a ratio of 1.0, symmetric, spanning at least +-5%
    (wider when the data are), and never below 0."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    half = max(MIN_RATIO_HALF_RANGE, float(np.abs(v - 1.0).max()) if v.size else 0.0)
    return TwoSlopeNorm(vcenter=1.0, vmin=max(1.0 - half, 0.0), vmax=1.0 + half)


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
        text[i][j] = "base" if r.is_baseline else _fmt(value, 3) + ("\nn<2" if single else "")
    norm = ratio_norm(grid)
    fig, ax = plt.subplots(figsize=(min(1.4 * len(scheds) + 3.0, 10.5), 0.6 * len(configs) + 2.0))
    im = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto")
    half = norm.vmax - 1.0
    for i in range(len(configs)):
        for j in range(len(scheds)):
            if text[i][j]:
                dark = np.isfinite(grid[i, j]) and abs(grid[i, j] - 1.0) > 0.6 * half
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(scheds)), scheds)
    ax.set_yticks(range(len(configs)), configs)
    ax.set_xlabel("schedule")
    ax.set_ylabel("configuration")
    ax.set_title("eval perplexity / baseline of the same seed (mean over seeds)")
    fig.colorbar(im, ax=ax, label="perplexity ratio (1 = baseline; red = worse)")
    return fig


def _symmetric_ylim(ax, values, floor: float = 0.02) -> None:
    """y limits centred on 1.0 that hold every finite value (at least +-floor)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    half = max(floor, float(np.abs(v - 1.0).max()) if v.size else 0.0) * 1.15
    ax.set_ylim(max(1.0 - half, 0.0), 1.0 + half)
    ax.axhline(1.0, color="0.4", lw=0.8)


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
    fig, ax = plt.subplots(figsize=(9, 4.8))
    cmap = plt.get_cmap("viridis")
    scheds = schedule_order(grid["schedule"].unique())
    shown = [1.0]
    for k, s in enumerate(scheds):
        part = grid[grid["schedule"] == s]
        x = [xpos[c] for c in part["configuration"]]
        y = np.where(part["is_baseline"], 1.0, part["ratio_mean"].astype(float))
        lo = np.where(part["is_baseline"], 1.0, part["ratio_ci_low"].astype(float))
        hi = np.where(part["is_baseline"], 1.0, part["ratio_ci_high"].astype(float))
        shown += [*y, *lo, *hi]
        err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=cmap(k / max(len(scheds) - 1, 1) * 0.9), label=s)
    for i, r in enumerate(comps.itertuples(index=False)):
        if np.isfinite(r.ratio_mean):
            shown.append(r.ratio_mean)
            ax.axhline(r.ratio_mean, color=plt.get_cmap("tab10")(3 + i), ls="--", lw=1.2,
                       label=f"ours: {r.comparator} {r.ratio_mean:.3f}x")
    _symmetric_ylim(ax, shown)
    if _scale(data)["comparable"]:  # the paper's figures as a note, never as the axis
        ax.text(0.01, 0.98, f"paper v1 (GPT-2 small): quintic {PAPER_V1['quintic_ratio']}x, "
                f"uniform localist {PAPER_V1['uniform_ratio']}x", transform=ax.transAxes, va="top",
                fontsize=9, color="0.3", bbox={"facecolor": "#fff8e6", "edgecolor": "0.7"})
    ax.set_ylabel("perplexity ratio to baseline")
    if use_peak:
        ax.set_xlabel("peak locality lambda_max")
    else:
        ax.set_xticks(range(len(configs)), configs)
        ax.set_xlabel("configuration")
    ax.set_title("perplexity ratio (mean, 95% t CI over paired seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def fig_positions(data: ReportInput):
    """Held-out perplexity ratio by the query token's position in its block: exp of the mean
    paired loss difference to the baseline, with its 95% t CI, per schedule and comparator."""
    rows = data.cell_stats[data.cell_stats["metric"].isin(POSITION_METRICS) & ~data.cell_stats["is_baseline"]]
    if rows.empty or not np.isfinite(rows["mean_diff"].to_numpy(dtype=float)).any():
        return None
    metrics = [m for m in POSITION_METRICS if m in set(rows["metric"])]
    specs = [s for s in _line_specs(data.cells, data.baseline) if s["key"][0] != data.baseline]
    base = data.cell_stats[data.cell_stats["metric"].isin(metrics) & data.cell_stats["is_baseline"]]
    base_loss = base.groupby("metric")["mean"].first()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(len(specs), 1)
    shown = [1.0]
    for k, spec in enumerate(specs):
        part = rows[_select(rows, spec["key"])].set_index("metric").reindex(metrics)
        y = np.exp(part["mean_diff"].to_numpy(dtype=float))
        lo, hi = np.exp(part["diff_ci_low"].to_numpy(dtype=float)), np.exp(part["diff_ci_high"].to_numpy(dtype=float))
        if not np.isfinite(y).any():
            continue
        shown += [*y, *lo, *hi]
        x = np.arange(len(metrics)) + (k - (len(specs) - 1) / 2) * width
        err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=err, marker="o", ls="none", capsize=3, color=spec["style"]["color"],
                    label=spec["label"])
    _symmetric_ylim(ax, shown)
    ax.set_xticks(range(len(metrics)), [f"{POSITION_LABELS[m]}\n(baseline {_fmt(base_loss.get(m, np.nan))} nats)"
                                        for m in metrics])
    ax.set_xlabel("position of the predicting token in its block")
    ax.set_ylabel("held-out perplexity ratio to baseline")
    ax.set_title("where locality costs: loss by position in the block (exp of mean paired difference, 95% t CI)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _spec_panels(df: pd.DataFrame, specs: list[dict], panels: list[tuple], x: str, title: str):
    """One panel per (filter dict, y label, log y); a line with a CI band per spec."""
    drawn = False
    fig, axes = plt.subplots(1, len(panels), figsize=(min(4.6 * len(panels), 10.5), 3.9), squeeze=False)
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
    axes[0][0].legend()
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
    fig, axes = plt.subplots(len(shown), len(layers), figsize=(4.6 * len(layers), 4.2 * len(shown)), squeeze=False)
    for i, (pick, rows) in enumerate(shown):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            part = rows[rows["layer"] == layer]
            if part.empty:
                ax.set_axis_off()
                ax.set_title(f"{pick['label']}\nlayer {layer}: no data")
                continue
            n = int(max(part["query"].max(), part["key"].max())) + 1
            mat = np.full((n, n), np.nan)
            mat[part["query"].to_numpy(dtype=int), part["key"].to_numpy(dtype=int)] = part["weight"].to_numpy(dtype=float)
            ax.imshow(np.ma.masked_invalid(mat), cmap="Blues", interpolation="nearest",
                      norm=PowerNorm(0.4, vmin=0.0, vmax=max(float(np.nanmax(mat)), 1e-12)))
            if "token" in part and n <= 24:  # token labels only where 9 pt fits
                tokens = part.drop_duplicates("key").set_index("key")["token"]
                ticks = [str(tokens.get(k, "")).replace("\n", "\\n")[:10] for k in range(n)]
                ax.set_xticks(range(n), ticks, rotation=90)
                ax.set_yticks(range(n), ticks)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
            ax.set_title(f"{pick['label']}\nlayer {layer}")
    fig.suptitle("attention on one sample passage (mean over heads)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# HTML


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
    return "no CI" if not (np.isfinite(low) and np.isfinite(high)) else f"[{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _headline_table(data: ReportInput) -> str:
    """eval_ppl per cell; the bootstrap and Wilcoxon columns only where some cell has them (the
    raw p (t) is in the full table below), so the table and its notes fit a 1280 px window."""
    rows = headline_rows(data.cell_stats)
    boot = np.isfinite(rows["boot_low"].to_numpy(dtype=float)).any()
    wilcoxon = np.isfinite(rows["p_wilcoxon"].to_numpy(dtype=float)).any()
    body, classes = [], []
    for r in rows.itertuples(index=False):
        body.append([
            r.label, _fmt(r.peak), r.n_seeds, _fmt(r.mean), _ci(r.ci_low, r.ci_high),
            *([_ci(r.boot_low, r.boot_high)] if boot else []),
            "base" if r.is_baseline else _fmt(r.ratio_mean, 3),
            "" if r.is_baseline else _ci(r.ratio_ci_low, r.ratio_ci_high, 3),
            _fmt_p(r.p_holm), *([_fmt_p(r.p_wilcoxon)] if wilcoxon else []), _fmt(r.d_z), r.note])
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
    focus = focus_configuration(data.cells, data.baseline)

    def ours(mask, what):
        r = stats_[mask]
        if r.empty or not np.isfinite(r["ratio_mean"].iloc[0]):
            return [f"not in this sweep ({what})", "-"]
        r = r.iloc[0]
        return [f"{label(r.configuration, r.schedule, r.comparator)}: {_fmt(r.ratio_mean, 3)}x "
                f"{_ci(r.ratio_ci_low, r.ratio_ci_high, 3)}", _fmt(r["mean"])]

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


def _scale(data: ReportInput) -> dict:
    if data.provenance is None:
        return {"comparable": False, "statement": "Scale: no provenance record, so the scale gap to the "
                "paper's GPT-2 small is unknown; the paper's figures are left out."}
    return prov_mod.scale_gap(data.provenance)


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
                           ("{} accumulation", t["grad_accum"]), ("seq_len {}", d["seq_len"]))),
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
    return f'<dl class="prov">{body}</dl><p class="muted">Also summary/provenance.json.</p>'


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
            "ratio_mean", "ratio_ci_low", "ratio_ci_high", "p_ttest", "p_wilcoxon", "p_holm", "d_z", "seeds_2pct"]
    rows = []
    for r in data.cell_stats.to_dict("records"):
        vals = [label(r["configuration"], r["schedule"], r["comparator"]), r["metric"]]
        for c in cols:
            v = r[c]
            vals.append(str(v) if c == "n_seeds" else (_fmt_p(v) if c.startswith("p_") else
                                                       _fmt(v, 0 if c == "seeds_2pct" else 4)))
        rows.append(vals + [r["note"]])
    return _table(["cell", "metric", *cols, "note"], rows, left=2, note=True)


def _paper_section(data: ReportInput) -> str:
    scale = _scale(data)
    statement = f'<p class="scale">{html.escape(scale["statement"])}</p>'
    return statement + (_paper_table(data) if scale["comparable"] else "")


def _figure_html(name: str, png: bytes | None, caption: str, missing: str) -> str:
    if png is None:
        return f'<p class="nodata">No data for this figure: {html.escape(missing)}.</p>'
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'
            f'<figcaption class="muted">{html.escape(caption)} (also {html.escape(name)})</figcaption></figure>')


def render(data: ReportInput) -> tuple[str, dict[str, bytes]]:
    """The HTML text and the PNG figures by file name (absent figures are left out)."""
    pngs: dict[str, bytes] = {}
    makers = {"ratio_heatmap.png": fig_ratio_heatmap, "ratio_by_peak.png": fig_ratio_by_peak,
              "positions.png": fig_positions, "layers.png": fig_layers, "curves.png": fig_curves,
              "attention.png": fig_attention}
    with plt.rc_context(FONTS):
        for name in FIGURES:
            fig = makers[name](data)
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
        "interval is too narrow; read the t interval first. Under 3 paired seeds there is no "
        "bootstrap interval and no Wilcoxon test.</p>",
        (f'<p><b>PARTIAL RESULTS: {html.escape(notes["partial"])}</b></p>' if notes.get("partial") else ""),
        "<h2>What was run</h2>", _provenance_section(data),
        "<h3>Scale and the paper's headline</h3>", _paper_section(data),
        *([f"<h2>Search</h2><p>{html.escape(notes['search'])}</p>"] if notes.get("search") else []),
        "<h2>Headline: eval perplexity</h2>", _headline_table(data),
        "<h2>Perplexity ratio to the baseline</h2>",
        _figure_html("ratio_heatmap.png", pngs.get("ratio_heatmap.png"),
                     "Mean ratio over seeds per configuration and schedule; 'base' is the baseline.",
                     "no completed comparison with the baseline"),
        _figure_html("ratio_by_peak.png", pngs.get("ratio_by_peak.png"),
                     "Ratio against peak locality per schedule with 95% t CIs; our comparators dashed"
                     + ("; the paper's v1 figures as a note in the corner, not on the axis."
                        if _scale(data)["comparable"] else " (the paper's figures are left out: see Scale)."),
                     "no completed comparison with the baseline"),
        "<h2>Where locality costs: held-out loss by position in the block</h2>",
        _figure_html("positions.png", pngs.get("positions.png"),
                     "Perplexity ratio to the baseline of the same seed for tokens predicted at the first "
                     "position of their block, positions 2-4 and 5+ (window partitioner: by the number of "
                     "earlier keys in the band); exp of the mean paired loss difference with its 95% t CI. "
                     "At small scale the mean hides the cost of locality, which sits at block starts.",
                     "no per-position eval losses in trials.parquet (trials from before they were recorded)"),
        f"<h2>Per-layer attention ({html.escape(str(focus))} against the baseline)</h2>",
        _figure_html("layers.png", pngs.get("layers.png"),
                     "Lambda, attention entropy and in-block mass against depth at each trial's last "
                     f"evaluation, one line per schedule, 95% t CI bands over seeds (from {MIN_SEEDS_FOR_RANKS} seeds).",
                     notes.get("layers", "no per-layer rows for completed trials")),
        "<h2>Training and eval curves</h2>",
        _figure_html("curves.png", pngs.get("curves.png"),
                     f"Mean over seeds with 95% t CI bands (from {MIN_SEEDS_FOR_RANKS} seeds).",
                     notes.get("steps", "no step rows for completed trials")),
        "<h2>Attention patterns (first and last layer)</h2>",
        _figure_html("attention.png", pngs.get("attention.png"),
                     "One sample passage saved at the end of each trial; baseline, quintic and uniform strict.",
                     notes.get("attention", "no attention sample for the picked trials")),
        "<h2>Diverged, errored and missing trials</h2>", _excluded_section(data),
        "<h2>All cell statistics</h2>",
        "<details><summary>every metric, every cell (also summary/cells.parquet)</summary>"
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
        uri = lio.join(summary_uri, name)  # a figure without data now must not survive from an older run
        if name in pngs:
            lio.write_bytes(uri, pngs[name])
        elif lio.exists(uri):
            lio.delete(uri)
    uri = lio.join(summary_uri, "report.html")
    lio.write_text(uri, page)
    return uri
