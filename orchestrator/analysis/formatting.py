"""Results as text, the same in the terminal and in the HTML report: how numbers and p-values are
printed, which rows the eval-perplexity headline shows, and the terminal's headline table."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from localist.outputs import POSITION_LABELS, STEP0_PREFIX
from orchestrator.analysis.cells import KEYS, label


def fmt(x, digits: int = 2) -> str:
    """A number with ``digits`` decimals; '-' when missing or not finite."""
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_p(p) -> str:
    """A p-value: three decimals, scientific below 0.001; '-' when missing."""
    if p is None or not np.isfinite(p):
        return "-"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def headline_rows(cells: pd.DataFrame, metric: str = "eval_ppl") -> pd.DataFrame:
    """The rows of one metric for display; identical baseline rows (one shared run) collapsed."""
    rows = cells[cells["metric"] == metric].copy()
    rows["label"] = [label(*k) for k in rows[list(KEYS)].itertuples(index=False)]
    base = rows[rows["is_baseline"]]
    if len(base) > 1 and base[["n_seeds", "mean", "std"]].astype(float).round(12).drop_duplicates().shape[0] == 1:
        keep = base.index[0]
        rows = rows.drop(index=base.index[1:])
        rows.loc[keep, "label"] = f"{base['configuration'].iloc[0]} (all schedules)"
    return rows.reset_index(drop=True)


RECOVERY_GROUPS = {"eval_loss": "all tokens", **POSITION_LABELS}  # loss metric -> how the tables name it


def recovery_rows(cells: pd.DataFrame) -> pd.DataFrame:
    """Per compared cell and position group, locality's cost before and after fine-tuning: the
    perplexity ratio to the baseline of the same seed at step 0 (``zs_*``) and at the end
    (``ft_*``), as exp of the mean paired loss difference with its 95% t CI and Holm p, and
    ``recovered``: the share of the step-0 excess that fine-tuning removed (only where the step-0
    ratio is at least 1.005, since a share of nothing means nothing). Empty without step-0 figures."""
    rows = []
    comp = cells[~cells["is_baseline"].astype(bool)]
    for metric, group in RECOVERY_GROUPS.items():
        ft = comp[comp["metric"] == metric].set_index(list(KEYS))
        zs = comp[comp["metric"] == STEP0_PREFIX + metric].set_index(list(KEYS))
        for key in zs.index.intersection(ft.index):
            row = {"label": label(*key), "group": group}
            for tag, r in (("zs", zs.loc[key]), ("ft", ft.loc[key])):
                for name, col in (("ratio", "mean_diff"), ("low", "diff_ci_low"), ("high", "diff_ci_high")):
                    row[f"{tag}_{name}"] = float(np.exp(r[col]))
                row[f"{tag}_p"], row[f"{tag}_n"] = float(r["p_holm"]), r["n_paired"]
            excess = row["zs_ratio"] - 1.0
            row["recovered"] = (row["zs_ratio"] - row["ft_ratio"]) / excess if excess >= 0.005 else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


WIDTH = 120  # the terminal table's lines, footnotes included, fit this many columns


def terminal_table(cells: pd.DataFrame, baseline: str, excluded: pd.DataFrame) -> str:
    """The eval-perplexity headline as aligned plain text, with the excluded trials counted. Notes are
    numbered footnotes under the table (one number per distinct note), so no line passes WIDTH columns."""
    rows = headline_rows(cells)
    table = [("cell", "n", "eval_ppl", "95% CI", "ratio", "ratio 95% CI", "p_holm", "d_z", "note")]
    notes: dict[str, int] = {}
    for r in rows.itertuples(index=False):
        ratio = "baseline" if r.is_baseline else fmt(r.ratio_mean, 3)
        ratio_ci = "" if r.is_baseline else f"[{fmt(r.ratio_ci_low, 3)}, {fmt(r.ratio_ci_high, 3)}]"
        note = "" if r.is_baseline or not str(r.note or "") else str(r.note)
        mark = f"[{notes.setdefault(note, len(notes) + 1)}]" if note else ""
        table.append((r.label, str(r.n_seeds), fmt(r.mean), f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]",
                      ratio, ratio_ci, fmt_p(r.p_holm), fmt(r.d_z), mark))
    lines = [f"eval_ppl against baseline {baseline!r} (same seed; p: paired t-test, Holm)", *_aligned(table)]
    for note, n in notes.items():
        lines += textwrap.wrap(note, WIDTH, initial_indent=f"[{n}] ", subsequent_indent=" " * (len(str(n)) + 3))
    if len(excluded):
        counts = excluded["reason"].value_counts().sort_index()
        lines += textwrap.wrap(f"excluded {len(excluded)} trial(s): " + ", ".join(f"{k} {v}" for k, v in counts.items()),
                               WIDTH, subsequent_indent="    ")
    return "\n".join(lines + _first_token_lines(cells))


def _aligned(table: list[tuple[str, ...]]) -> list[str]:
    """Rows of strings as columns: the first and last left-aligned, the rest right; a rule under the header."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for j, row in enumerate(table):
        cols = (v.ljust(w) if i in (0, len(row) - 1) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
        lines.append("  ".join(cols).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _first_token_lines(cells: pd.DataFrame) -> list[str]:
    """Where locality costs, before and after fine-tuning: the first token of a block (the report has
    every position); nothing without step-0 figures."""
    rows = recovery_rows(cells)
    rows = rows[rows["group"] == RECOVERY_GROUPS["eval_loss_pos1"]] if len(rows) else rows
    if rows.empty:
        return []
    table = [("cell", "step 0", "p_holm", "fine-tuned", "p_holm", "recovered")]
    for r in rows.itertuples(index=False):
        table.append((r.label, f"{fmt(r.zs_ratio, 3)}x", fmt_p(r.zs_p), f"{fmt(r.ft_ratio, 3)}x", fmt_p(r.ft_p),
                      "-" if not np.isfinite(r.recovered) else f"{100 * r.recovered:.0f}%"))
    return ["", "first token of its block: perplexity ratio to the baseline before any update (step 0) and "
                "after fine-tuning", *_aligned(table)]
