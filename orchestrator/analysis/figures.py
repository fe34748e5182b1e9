"""The report's figures, drawn with matplotlib from a ``ReportInput``; each returns None when
there is nothing to draw, and ``draw`` renders them all to PNG bytes by file name.

Figures are drawn at their display size (PNG at 100 dpi, at most 10.5 inches wide, so 1:1 in the
1100 px page) with no text under 9 pt (``FONTS``); ratio colour maps are centred on 1.0 with a
symmetric range of at least +-5% (``ratio_norm``). The per-layer, curve and per-position figures
draw the same lines (``_line_specs``): each schedule of the focus configuration, the baseline
once, and every comparator.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from localist.outputs import POSITION_LABELS, STEP0_PREFIX  # noqa: E402
from orchestrator import layout  # noqa: E402
from orchestrator.analysis.cells import KEYS, is_null, schedule_order  # noqa: E402
from orchestrator.analysis.formatting import fmt  # noqa: E402
from orchestrator.analysis.paper import PAPER_V1  # noqa: E402
from orchestrator.analysis.report_input import ReportInput  # noqa: E402
from orchestrator.analysis.stats import MIN_SEEDS_FOR_RANKS  # noqa: E402
from orchestrator.analysis.tables import POSITION_METRICS  # noqa: E402

# summary/<name> of each figure (orchestrator.layout names them), in the report's order
RATIO_HEATMAP, RATIO_BY_PEAK, POSITIONS, LAYERS, CURVES, ATTENTION = layout.REPORT_FIGURES
MIN_RATIO_HALF_RANGE = 0.05  # ratio colour maps span at least 0.95-1.05
FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 11}


def _line_specs(cells: pd.DataFrame, baseline: str, focus: str) -> list[dict]:
    """The lines of the per-layer, curve and per-position figures: each schedule of the focus
    configuration, the baseline once, and every comparator."""
    specs = []
    cmap = plt.get_cmap("viridis")
    grid = cells[cells["comparator"].isna()]
    scheds = schedule_order(grid["schedule"].unique())
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
        if is_null(r.schedule):
            continue
        i, j = configs.index(r.configuration), scheds.index(r.schedule)
        value = 1.0 if r.is_baseline else r.ratio_mean
        grid[i, j] = value
        single = is_null(r.n_paired) or int(r.n_paired) < 2
        text[i][j] = "base" if r.is_baseline else fmt(value, 3) + ("\nn<2" if single else "")
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
    if data.scale["comparable"]:  # the paper's figures as a note, never as the axis
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
    paired loss difference to the baseline, with its 95% t CI, per schedule and comparator; hollow
    markers left of each, joined to it, the same at step 0 (before fine-tuning) where recorded."""
    stats_ = data.cell_stats[~data.cell_stats["is_baseline"].astype(bool)]
    rows = stats_[stats_["metric"].isin(POSITION_METRICS)]
    if rows.empty or not np.isfinite(rows["mean_diff"].to_numpy(dtype=float)).any():
        return None
    metrics = [m for m in POSITION_METRICS if m in set(rows["metric"])]
    start = stats_[stats_["metric"].isin([STEP0_PREFIX + m for m in metrics])]
    specs = [s for s in _line_specs(data.cells, data.baseline, data.focus) if s["key"][0] != data.baseline]
    base = data.cell_stats[data.cell_stats["metric"].isin(metrics) & data.cell_stats["is_baseline"]]
    base_loss = base.groupby("metric")["mean"].first()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(len(specs), 1)
    shown = [1.0]

    def ratios(part: pd.DataFrame, names: list[str]):
        part = part.set_index("metric").reindex(names)
        return [np.exp(part[c].to_numpy(dtype=float)) for c in ("mean_diff", "diff_ci_low", "diff_ci_high")]

    any_start = False
    for k, spec in enumerate(specs):
        y, lo, hi = ratios(rows[_select(rows, spec["key"])], metrics)
        if not np.isfinite(y).any():
            continue
        shown += [*y, *lo, *hi]
        x = np.arange(len(metrics)) + (k - (len(specs) - 1) / 2) * width
        color = spec["style"]["color"]
        y0, lo0, hi0 = ratios(start[_select(start, spec["key"])], [STEP0_PREFIX + m for m in metrics])
        if np.isfinite(y0).any():
            any_start = True
            shown += [*y0, *lo0, *hi0]
            x0 = x - width * 0.35
            ax.errorbar(x0, y0, yerr=np.vstack([np.nan_to_num(y0 - lo0), np.nan_to_num(hi0 - y0)]), marker="o",
                        mfc="white", ls="none", capsize=2, color=color, alpha=0.8)
            for a, b, c, d in zip(x0, y0, x, y):
                ax.plot([a, c], [b, d], color=color, lw=0.7, alpha=0.6)
        err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=err, marker="o", ls="none", capsize=3, color=color, label=spec["label"])
    _symmetric_ylim(ax, shown)
    ax.set_xticks(range(len(metrics)), [f"{POSITION_LABELS[m]}\n(baseline {fmt(base_loss.get(m, np.nan))} nats)"
                                        for m in metrics])
    ax.set_xlabel("position of the predicting token in its block")
    ax.set_ylabel("held-out perplexity ratio to baseline")
    title = "where locality costs: loss by position in the block (exp of mean paired difference, 95% t CI)"
    ax.set_title(title + ("\nhollow: step 0, before fine-tuning; filled: after" if any_start else ""))
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
    return _spec_panels(data.layers, _line_specs(data.cells, data.baseline, data.focus), panels, "layer",
                        "per-layer attention at the last evaluation (mean, 95% CI band over seeds)")


def fig_curves(data: ReportInput):
    if data.curves.empty:
        return None
    panels = [({"split": "train", "metric": "loss"}, "training loss", False),
              ({"split": "eval", "metric": "ppl"}, "eval perplexity (log)", True)]
    return _spec_panels(data.curves, _line_specs(data.cells, data.baseline, data.focus), panels, "step",
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


MAKERS = {RATIO_HEATMAP: fig_ratio_heatmap, RATIO_BY_PEAK: fig_ratio_by_peak, POSITIONS: fig_positions,
          LAYERS: fig_layers, CURVES: fig_curves, ATTENTION: fig_attention}


def draw(data: ReportInput) -> dict[str, bytes]:
    """Every figure that has data, as PNG bytes by file name, in the report's order."""
    pngs: dict[str, bytes] = {}
    with plt.rc_context(FONTS):
        for name in layout.REPORT_FIGURES:
            fig = MAKERS[name](data)
            if fig is not None:
                pngs[name] = _png(fig)
    return pngs
