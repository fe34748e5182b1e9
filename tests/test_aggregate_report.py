"""orchestrator.analysis.aggregate and orchestrator.analysis.report on real Parquet files written to tmp_path."""

from __future__ import annotations

import base64
import importlib.util
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats as sps

from localist import io as lio
from localist.errors import UserError
from orchestrator.analysis import stats
from orchestrator.analysis.aggregate import AggregateError, aggregate

REPO = Path(__file__).resolve().parents[1]
PEAKS = {"peak-0": 0.0, "peak-0.5": 0.5, "peak-1": 1.0}
SCHEDULES = ("linear", "quintic")
SEEDS = (1, 2, 3, 4)
BASE_PPL = {1: 20.0, 2: 21.0, 3: 19.5, 4: 20.5}
TRIAL_SCHEMA = pa.schema([
    ("trial_id", pa.string()), ("run_trial_id", pa.string()), ("configuration", pa.string()),
    ("schedule", pa.string()), ("comparator", pa.string()), ("seed", pa.int64()), ("status", pa.string()),
    ("error", pa.string()), ("eval_loss", pa.float64()), ("eval_ppl", pa.float64()),
    ("locality.peak", pa.float64()), ("locality.schedule", pa.string()), ("model.n_layer", pa.int64()),
])


def load_benchmark():
    spec = importlib.util.spec_from_file_location("aggregate_scale_under_test",
                                                  REPO / "benchmarks" / "aggregate_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trial(conf, sched, comp, seed, ppl, status="completed", loss=None, peak=None):
    if comp is None:
        tid = f"{conf}__{sched}__s{seed}"
        run = f"{conf}__{SCHEDULES[0]}__s{seed}" if PEAKS.get(conf) == 0 else tid
    else:
        tid = run = f"{comp}__s{seed}"
    done = status == "completed"
    return {"trial_id": tid, "run_trial_id": run, "configuration": conf, "schedule": sched,
            "comparator": comp, "seed": seed, "status": status, "error": None if done else f"boom {status}",
            "eval_ppl": ppl if done else float("nan"),
            "eval_loss": (loss if loss is not None else math.log(ppl)) if done else float("nan"),
            "locality.peak": PEAKS.get(conf, 1.0) if peak is None else peak,
            "locality.schedule": "uniform" if comp else "polynomial", "model.n_layer": 4}


def known_trials() -> list[dict]:
    """3 configurations x 2 schedules x 4 seeds + uniform-strict x 4 seeds, with:
    the baseline's seed 4 diverged (one shared run, so in both schedules), peak-1/quintic seed 2
    errored, and peak-0.5/linear seed 3 completed with a NaN eval_ppl (its eval_loss is finite)."""
    rng = np.random.default_rng(7)
    rows = []
    for sched_i, sched in enumerate(SCHEDULES):
        for conf, peak in PEAKS.items():
            for seed in SEEDS:
                if peak == 0:
                    status = "diverged" if seed == 4 else "completed"
                    rows.append(trial(conf, sched, None, seed, BASE_PPL[seed], status))
                    continue
                ratio = 1.0 + peak * (3.0 - 2.0 * sched_i) + rng.normal(0, 0.05)
                status = "errored" if (conf, sched, seed) == ("peak-1", "quintic", 2) else "completed"
                row = trial(conf, sched, None, seed, BASE_PPL[seed] * ratio, status)
                if (conf, sched, seed) == ("peak-0.5", "linear", 3):
                    row["eval_ppl"] = float("nan")
                rows.append(row)
    for seed in SEEDS:
        rows.append(trial(None, None, "uniform-strict", seed, BASE_PPL[seed] * (6.6 + rng.normal(0, 0.2))))
    return rows


def write_trials(root: str, rows: list[dict], schema: pa.Schema = TRIAL_SCHEMA) -> None:
    schema = pa.schema([f for f in schema if f.name in rows[0]])
    lio.write_parquet(pa.Table.from_pylist(rows, schema=schema), lio.join(root, "results", "trials.parquet"))


def quiet(*_):
    return None


def row(cells: pd.DataFrame, conf, sched, comp, metric="eval_ppl") -> pd.Series:
    def match(col, v):
        return cells[col].isna() if v is None else cells[col] == v
    hit = cells[match("configuration", conf) & match("schedule", sched) & match("comparator", comp)
                & (cells["metric"] == metric)]
    assert len(hit) == 1, (conf, sched, comp, metric)
    return hit.iloc[0]


def close(actual, expected):
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return actual is None or pd.isna(actual)
    return actual == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("known"))
    rows = known_trials()
    write_trials(root, rows)
    out = aggregate(root, report=False, echo=quiet)
    cells = pd.read_parquet(os.path.join(root, "summary", "cells.parquet"))
    return root, rows, out, cells


def expected_rows(rows: list[dict], metric: str) -> list[dict]:
    """Every non-baseline cell's figures computed here, straight from scipy."""
    df = pd.DataFrame(rows)
    ok = df[(df["status"] == "completed") & np.isfinite(df[metric])]
    base = ok[ok["configuration"] == "peak-0"]
    out = []
    cells = [(c, s, None) for c in ("peak-0.5", "peak-1") for s in SCHEDULES] + [(None, None, "uniform-strict")]
    for conf, sched, comp in cells:
        mine = ok[ok["comparator"] == comp] if comp else ok[(ok["configuration"] == conf) & (ok["schedule"] == sched)]
        b = base[base["schedule"] == (sched or SCHEDULES[0])].set_index("seed")[metric]
        m = mine.set_index("seed")[metric]
        common = sorted(set(m.index) & set(b.index))
        x, y = m[common].to_numpy(), b[common].to_numpy()
        vals = m.to_numpy()
        t_lo, t_hi = sps.t.interval(0.95, len(vals) - 1, loc=vals.mean(), scale=sps.sem(vals))
        boot = sps.bootstrap((vals,), np.mean, method="BCa", n_resamples=stats.N_RESAMPLES,
                             rng=np.random.default_rng(stats.BOOTSTRAP_SEED)).confidence_interval
        if len(vals) < 3:  # too few seeds for a bootstrap interval
            boot = boot._replace(low=np.nan, high=np.nan)
        ratio = x / y
        r_lo, r_hi = sps.t.interval(0.95, len(ratio) - 1, loc=ratio.mean(), scale=sps.sem(ratio))
        d = x - y
        d_lo, d_hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
        out.append({"key": (conf, sched, comp), "n_seeds": len(vals), "mean": vals.mean(),
                    "std": vals.std(ddof=1), "sem": sps.sem(vals), "ci_low": t_lo, "ci_high": t_hi,
                    "boot_low": boot.low, "boot_high": boot.high, "n_paired": len(common),
                    "mean_diff": d.mean(), "diff_ci_low": d_lo, "diff_ci_high": d_hi,
                    "ratio_mean": ratio.mean(), "ratio_ci_low": r_lo, "ratio_ci_high": r_hi,
                    "ratio_std": ratio.std(ddof=1), "p_ttest": sps.ttest_rel(x, y).pvalue,
                    "p_wilcoxon": sps.wilcoxon(x, y).pvalue if len(common) >= 3 else np.nan,
                    "d_z": d.mean() / d.std(ddof=1)})
    for e, p in zip(out, stats.holm([e["p_ttest"] for e in out])):
        e["p_holm"] = p
    for e, p in zip(out, stats.holm([e["p_wilcoxon"] for e in out])):
        e["p_wilcoxon_holm"] = p
    return out


REQUIRED_COLUMNS = ["configuration", "schedule", "comparator", "metric", "n_seeds", "mean", "std", "sem",
                    "ci_low", "ci_high", "boot_low", "boot_high", "ratio_mean", "ratio_ci_low",
                    "ratio_ci_high", "p_ttest", "p_wilcoxon", "p_holm", "d_z", "mean_diff", "note"]


@pytest.mark.parametrize("metric", ["eval_ppl", "eval_loss"])
def test_cells_match_scipy(known, metric):
    _, rows, out, cells = known
    assert set(REQUIRED_COLUMNS) <= set(cells.columns)
    assert len(cells) == (3 * 2 + 1) * 2  # (cells + comparator) x metrics, long format
    for exp in expected_rows(rows, metric):
        got = row(cells, *exp["key"], metric)
        for col, value in exp.items():
            if col != "key":
                assert close(got[col], value), (exp["key"], metric, col, got[col], value)
        assert not got["is_baseline"]


def test_baseline_rows_are_empty_where_figures_do_not_apply(known):
    _, _, _, cells = known
    for sched in SCHEDULES:
        b = row(cells, "peak-0", sched, None)
        assert b["is_baseline"] and "baseline" in b["note"]
        assert b["n_seeds"] == 3 and b["mean"] == pytest.approx(np.mean([20.0, 21.0, 19.5]))
        for col in ("ratio_mean", "ratio_ci_low", "p_ttest", "p_wilcoxon", "p_holm", "d_z", "mean_diff"):
            assert pd.isna(b[col]), col


def test_missing_baseline_seed_pairs_on_common_seeds(known):
    _, _, _, cells = known
    r = row(cells, "peak-1", "linear", None)
    assert r["n_seeds"] == 4 and r["n_paired"] == 3
    assert "paired on 3 of 4 seeds" in r["note"]
    comp = row(cells, None, None, "uniform-strict")
    assert comp["n_paired"] == 3 and pd.isna(comp["configuration"])
    table = lio.read_parquet(lio.join(known[0], "summary", "cells.parquet"))
    assert table.column("configuration").null_count == 2  # the comparator's two metrics: null, not "None"
    assert table.column("ratio_mean").null_count == 2 * len(SCHEDULES)  # baseline rows: empty


def test_excluded_trials_counted_listed_never_averaged(known):
    _, rows, out, cells = known
    ex = out["excluded"]
    listed = dict(zip(ex["trial_id"], ex["reason"]))
    assert listed == {"peak-0__linear__s4": "diverged", "peak-0__quintic__s4": "diverged",
                      "peak-1__quintic__s2": "errored",
                      "peak-0.5__linear__s3": "completed without finite eval_ppl"}
    assert len(pd.read_parquet(os.path.join(known[0], "summary", "excluded.parquet"))) == 4
    r = row(cells, "peak-1", "quintic", None)
    assert r["n_seeds"] == 3 and r["n_excluded"] == 1 and "errored 1" in r["note"]
    assert r["mean"] == pytest.approx(np.mean([x["eval_ppl"] for x in rows if x["trial_id"].startswith(
        "peak-1__quintic") and x["status"] == "completed"]))


def test_nan_metric_in_completed_row_does_not_leak(known):
    _, _, _, cells = known
    ppl = row(cells, "peak-0.5", "linear", None, "eval_ppl")
    loss = row(cells, "peak-0.5", "linear", None, "eval_loss")
    assert ppl["n_seeds"] == 3 and loss["n_seeds"] == 4
    assert "completed without finite eval_ppl" in ppl["note"]
    assert np.isfinite(cells[cells["n_seeds"] > 0]["mean"]).all()
    assert np.isfinite(cells[cells["n_seeds"] > 1][["std", "ci_low", "ci_high", "boot_low"]]).all().all()


def test_terminal_table_and_return_value(known, tmp_path):
    root, rows, _, _ = known
    lines = []
    out = aggregate(root, report=False, echo=lines.append)
    text = "\n".join(lines)
    assert out["report"] is None and out["baseline"] == "peak-0"
    assert "peak-0 (all schedules)" in text and "uniform-strict" in text and "peak-1/quintic" in text
    assert "excluded 4 trial(s)" in text
    assert set(out) >= {"cells", "layers", "report", "excluded"}
    table = text.split("\nwrote: ")[0].splitlines()  # the table and its footnotes, before the files written
    assert max(len(line) for line in table) <= 120
    quintic = next(line for line in table if line.startswith("peak-1/quintic"))
    mark = quintic.split()[-1]  # the note column holds a footnote number
    assert re.fullmatch(r"\[\d\]", mark)
    footnote = " ".join(line.strip() for line in table[table.index(next(x for x in table if x.startswith(mark))):])
    assert footnote.startswith(f"{mark} 1 excluded (errored 1); paired on 2 of 3 seeds")
    shared = [line.split()[-1] for line in table if line.startswith(("peak-0.5/quintic", "peak-1/linear", "uniform"))]
    assert len(set(shared)) == 1 and sum(x.startswith(shared[0] + " ") for x in table) == 1  # one note, one number


def test_baseline_choice_and_errors(tmp_path):
    rows = known_trials()
    root = str(tmp_path / "a")
    write_trials(root, rows)
    out = aggregate(root, baseline="peak-0.5", report=False, echo=quiet)
    assert out["baseline"] == "peak-0.5"
    assert row(out["cells"], "peak-0.5", "linear", None)["is_baseline"]
    assert row(out["cells"], "peak-1", "linear", None)["n_paired"] == 3  # peak-0.5/linear lacks seed 3's ppl
    with pytest.raises(AggregateError, match="unknown baseline.*peak-0, peak-0.5, peak-1"):
        aggregate(root, baseline="nope", report=False, echo=quiet)
    # without locality.peak the baseline is found by name
    no_peak = str(tmp_path / "b")
    write_trials(no_peak, [{k: v for k, v in r.items() if k != "locality.peak"} for r in rows])
    assert aggregate(no_peak, report=False, echo=quiet)["baseline"] == "peak-0"
    # a peak column without a zero: a clear error listing the configurations
    no_zero = str(tmp_path / "c")
    write_trials(no_zero, [r for r in rows if r["configuration"] != "peak-0"])
    with pytest.raises(AggregateError, match="locality.peak == 0.*peak-0.5, peak-1"):
        aggregate(no_zero, report=False, echo=quiet)
    with pytest.raises(AggregateError, match="no results"):
        aggregate(str(tmp_path / "nothing"), report=False, echo=quiet)
    assert issubclass(AggregateError, ValueError)
    assert issubclass(AggregateError, UserError)  # the CLI's exit 2 for errors the user can fix


def test_layers_use_last_step_and_dedupe_shared_runs(tmp_path):
    root = str(tmp_path)
    rows = [trial(c, s, None, seed, BASE_PPL[seed] * (1 + PEAKS[c])) for c in ("peak-0", "peak-1")
            for s in SCHEDULES for seed in (1, 2, 3)]
    rows.append(trial("peak-1", "linear", None, 4, 99.0, "diverged"))
    write_trials(root, rows)
    rng = np.random.default_rng(3)
    layer_rows = []
    for r in rows:
        if r["configuration"] == "peak-0" and r["trial_id"] != r["run_trial_id"]:
            continue  # the shared baseline run is stored once, under its own trial id
        for step in (10, 20):
            for layer in range(4):
                v = rng.uniform(0, 1) if step == 20 else 123.0  # the early step must not count
                layer_rows.append({"trial_id": r["trial_id"], "run_trial_id": r["run_trial_id"],
                                   "configuration": r["configuration"], "schedule": r["schedule"],
                                   "comparator": None, "seed": r["seed"], "step": step, "layer": layer,
                                   "lambda": v, "entropy_bits": 2 * v, "entropy_norm": v / 2,
                                   "in_block_mass": 1 - v})
    lio.write_parquet(pa.Table.from_pylist(layer_rows), lio.join(root, "results", "layers.parquet"))
    out = aggregate(root, report=False, echo=quiet)
    layers = pd.read_parquet(os.path.join(root, "summary", "layers.parquet"))
    assert {"configuration", "schedule", "comparator", "layer", "quantity", "n_seeds", "mean", "ci_low",
            "ci_high"} <= set(layers.columns)
    assert set(layers["quantity"]) == {"lambda", "entropy_bits", "entropy_norm", "in_block_mass"}
    assert len(layers) == 4 * 4 * 4 == len(out["layers"])  # 4 cells x 4 layers x 4 quantities
    src = pd.DataFrame(layer_rows)
    for conf, sched in (("peak-1", "linear"), ("peak-0", "quintic")):
        got = layers[(layers["configuration"] == conf) & (layers["schedule"] == sched)
                     & (layers["layer"] == 2) & (layers["quantity"] == "in_block_mass")].iloc[0]
        run_conf = src[(src["configuration"] == conf) & (src["step"] == 20) & (src["layer"] == 2)
                       & (src["seed"] <= 3)]
        if conf == "peak-1":
            run_conf = run_conf[run_conf["schedule"] == sched]
        vals = run_conf["in_block_mass"].to_numpy()
        assert got["n_seeds"] == 3 and got["mean"] == pytest.approx(vals.mean())
        lo, hi = sps.t.interval(0.95, 2, loc=vals.mean(), scale=sps.sem(vals))
        assert (got["ci_low"], got["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self.tables, self.text = [], [], 0, []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append((attrs.get("alt"), attrs.get("src", "")))
        if tag in ("h1", "h2", "h3"):
            self._in_heading = True
            self.headings.append("")
        if tag == "table":
            self.tables += 1

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3"):
            self._in_heading = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_heading:
            self.headings[-1] += data


def parse(path) -> Page:
    page = Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    return page


PNG = "data:image/png;base64,"


def test_full_report(tmp_path):
    bench = load_benchmark()
    root = str(tmp_path / "sweep")
    bench.build_results(root, steps=6000, layers=1200, seeds=(1, 2))
    lines = []
    out = aggregate(root, echo=lines.append)
    summary = tmp_path / "sweep" / "summary"
    assert out["report"] == str(summary / "report.html")
    page = parse(out["report"])
    figures = [alt for alt, src in page.images if src.startswith(PNG)]
    assert sorted(figures) == sorted(["ratio_heatmap.png", "ratio_by_peak.png", "positions.png", "layers.png",
                                      "curves.png", "attention.png"])
    for alt, src in page.images:
        assert (summary / alt).read_bytes() == base64.b64decode(src[len(PNG):])
    text = " ".join(page.text)
    for heading in ("Headline", "paper", "Perplexity ratio", "Per-layer", "curves", "Attention patterns",
                    "Diverged, errored", "All cell statistics"):
        assert any(heading in h for h in page.headings), heading
    assert "1.89x" in text and "6.6x" in text and "paper" in text.lower()
    # the synthetic sweep claims GPT-2 small's size, so the paper stands beside ours, after the scale
    assert "Scale: this sweep trained 124.44M parameters (100.00% of GPT-2 small's 124M)" in text
    assert text.index("Scale: this sweep") < text.index("1.89x")
    assert "No data for this figure" not in text
    for tid in out["excluded"]["trial_id"]:
        assert tid in text
    assert "diverged 1" in text and "errored 1" in text
    assert page.tables >= 4
    assert any("report:" in line for line in lines)
    for name in ("cells.parquet", "layers.parquet", "curves.parquet", "excluded.parquet"):
        assert (summary / name).is_file()
    curves = pd.read_parquet(summary / "curves.parquet")
    assert set(curves["split"]) == {"train", "eval"} and set(curves["metric"]) == {"loss", "ppl"}


def test_small_sweep_single_seed_no_comparators(tmp_path):
    bench = load_benchmark()
    root = str(tmp_path / "one")
    bench.build_results(root, steps=400, layers=160, seeds=(1,), peaks=(0.0, 1.0), schedules=("quintic",),
                        comparators=(), failures=False)
    out = aggregate(root, echo=quiet)
    cells = pd.read_parquet(os.path.join(root, "summary", "cells.parquet"))
    assert (cells["n_seeds"] == 1).all()
    assert cells["ci_low"].isna().all() and cells["boot_low"].isna().all() and cells["p_ttest"].isna().all()
    assert cells["note"].str.contains("n=1: no CI").all()
    r = row(cells, "peak-1", "quintic", None)
    assert r["ratio_mean"] > 1 and r["n_paired"] == 1 and "no tests" in r["note"]
    page = parse(out["report"])
    assert len([1 for _, src in page.images if src.startswith(PNG)]) == 6
    assert "no CI" in " ".join(page.text)
    assert out["excluded"].empty


def test_grid_without_a_schedule_axis_pairs_with_the_baseline(tmp_path):
    """Null schedules (no schedule axis) must still find the baseline of the same seed."""
    root = str(tmp_path / "noaxis")
    rows = [trial(conf, None, None, seed, BASE_PPL[seed] * (1.0 + 0.1 * PEAKS[conf] + 0.01 * seed))
            for conf in ("peak-0", "peak-1") for seed in SEEDS]
    for r in rows:
        r["trial_id"] = r["run_trial_id"] = f"{r['configuration']}__s{r['seed']}"
    write_trials(root, rows)
    aggregate(root, echo=quiet, report=False)
    r = row(pd.read_parquet(os.path.join(root, "summary", "cells.parquet")), "peak-1", None, None)
    assert r["n_paired"] == len(SEEDS)
    assert r["ratio_mean"] == pytest.approx(np.mean([(1.1 + 0.01 * s) / (1.0 + 0.01 * s) for s in SEEDS]))


def test_report_without_optional_tables_and_stale_pngs(tmp_path):
    root = str(tmp_path / "bare")
    write_trials(root, known_trials())
    stale = tmp_path / "bare" / "summary" / "layers.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    out = aggregate("file://" + root, echo=quiet)
    assert out["report"].startswith("file://")
    page = parse(tmp_path / "bare" / "summary" / "report.html")
    images = sorted(alt for alt, src in page.images if src.startswith(PNG))
    assert images == ["ratio_by_peak.png", "ratio_heatmap.png"]
    text = " ".join(page.text)
    assert text.count("No data for this figure") == 4  # layers, curves, attention, positions
    assert "steps.parquet is absent" in text and "attention.parquet is absent" in text
    assert "no per-position eval losses" in text
    assert not stale.exists()
    assert out["layers"].empty and out["curves"].empty


def test_benchmark_quick(capsys):
    elapsed = load_benchmark().main(["--quick"])
    printed = capsys.readouterr().out
    assert elapsed > 0 and "rows/s" in printed and "aggregate without figures" in printed


def test_ratio_colour_map_is_centred_and_symmetric(known):
    """The heatmap's own norm: white at 1.0, symmetric, at least +-5% even when the data span less."""
    from orchestrator.analysis import figures
    from orchestrator.analysis.report_input import ReportInput

    assert (figures.ratio_norm([0.997, 1.001]).vmin, figures.ratio_norm([0.997, 1.001]).vmax) == (
        pytest.approx(0.95), pytest.approx(1.05))
    wide = figures.ratio_norm([0.9, 1.2, np.nan])
    assert (wide.vcenter, wide.vmin, wide.vmax) == (1.0, pytest.approx(0.8), pytest.approx(1.2))
    root, _, _, cells = known
    data = ReportInput(sweep_uri=root, baseline="peak-0", trials=pd.DataFrame(), cells=pd.DataFrame(),
                       cell_stats=cells, layers=pd.DataFrame(), curves=pd.DataFrame(),
                       excluded=pd.DataFrame())
    fig = figures.fig_ratio_heatmap(data)
    norm = fig.axes[0].images[0].norm
    ratios = cells.loc[(cells.metric == "eval_ppl") & cells.comparator.isna(), "ratio_mean"].dropna()
    assert norm.vcenter == 1.0 and norm(1.0) == pytest.approx(0.5)
    assert norm.vmax - 1.0 == pytest.approx(max(0.05, (ratios - 1).abs().max()))
    assert 1.0 - norm.vmin == pytest.approx(min(norm.vmax - 1.0, 1.0))
    labels = [t.get_text() for t in fig.axes[0].texts if t.get_text() != "base"]
    assert labels and all(len(t.split("\n")[0].split(".")[1]) == 3 for t in labels)  # three decimals


def test_figure_text_is_at_least_9pt_and_fits_the_page(tmp_path):
    """Every figure of a full report, drawn as figures.draw draws it."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from orchestrator.analysis import aggregate as agg
    from orchestrator.analysis import figures, tables
    from orchestrator.analysis.cells import attach_cells, cell_table
    from orchestrator.analysis.report_input import ReportInput

    root = str(tmp_path / "sweep")
    load_benchmark().build_results(root, steps=3000, layers=600, seeds=(1, 2, 3))
    trials = tables.load_trials(root)
    cells = cell_table(trials, "peak-0")
    trials = attach_cells(trials, cells)
    stats_ = agg.cell_statistics(trials, cells, bootstrap=False)
    ids = ["trial_id", "run_trial_id"]
    steps = pd.read_parquet(os.path.join(root, "results", "steps.parquet"),
                            columns=ids + ["split", "step", *tables.CURVE_METRICS])
    layers = pd.read_parquet(os.path.join(root, "results", "layers.parquet"),
                             columns=ids + ["step", "layer", *tables.LAYER_QUANTITIES])
    data = ReportInput(sweep_uri=root, baseline="peak-0", trials=trials, cells=cells, cell_stats=stats_,
                       layers=agg.layer_statistics(layers, trials, cells),
                       curves=agg.curve_statistics(steps, trials, cells), excluded=agg.excluded_trials(trials))
    makers = (figures.fig_ratio_heatmap, figures.fig_ratio_by_peak, figures.fig_positions, figures.fig_layers,
              figures.fig_curves)
    with plt.rc_context(figures.FONTS):
        for make in makers:
            fig = make(data)
            assert fig is not None, make.__name__
            fig.canvas.draw()
            sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
            assert sizes and min(sizes) >= 9, (make.__name__, min(sizes))
            assert fig.get_size_inches()[0] <= 10.5, make.__name__
            plt.close(fig)


def test_no_report_removes_the_stale_report_and_says_what_it_wrote(tmp_path):
    import subprocess

    from tests.helpers import CLI, env

    root = tmp_path / "sweep"
    write_trials(str(root), known_trials())
    summary = root / "summary"
    summary.mkdir()
    for name in ("report.html", "ratio_heatmap.png", "positions.png"):  # from an earlier aggregate
        (summary / name).write_bytes(b"old")
    proc = subprocess.run(CLI + ["aggregate", str(root), "--no-report"], env=env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(summary.glob("*.png")) and not (summary / "report.html").exists()
    assert f"wrote: {summary / 'cells.parquet'}" in proc.stdout and str(summary / "provenance.json") in proc.stdout
    assert "removed the stale report" in proc.stdout and str(summary / "report.html") in proc.stdout


def test_small_n_gives_no_bootstrap_or_wilcoxon_and_a_seed_estimate(tmp_path):
    root = str(tmp_path / "two")
    load_benchmark().build_results(root, steps=400, layers=160, seeds=(1, 2), peaks=(0.0, 1.0),
                                   schedules=("quintic",), comparators=(), failures=False)
    out = aggregate(root, echo=quiet)
    cells = pd.read_parquet(os.path.join(root, "summary", "cells.parquet"))
    assert (cells["n_seeds"] == 2).all()
    assert cells[["boot_low", "boot_high", "p_wilcoxon"]].isna().all().all()
    r = row(cells, "peak-1", "quintic", None)
    assert np.isfinite(r["p_ttest"]) and "no bootstrap CI" in r["note"] and "no Wilcoxon" in r["note"]
    trials = pd.read_parquet(os.path.join(root, "results", "trials.parquet"))
    ppl = trials.pivot_table(index="seed", columns="locality.peak", values="eval_ppl")
    ratio_sd = (ppl[1.0] / ppl[0.0]).std(ddof=1)
    assert r["ratio_std"] == pytest.approx(ratio_sd)
    assert r["seeds_2pct"] == stats.seeds_needed(ratio_sd)
    assert f"~{r['seeds_2pct']:.0f} seeds would detect a 2% ratio at 80% power" in r["note"]
    text = " ".join(parse(out["report"]).text)
    assert "Only 2 paired seed(s)" in text and "would detect a 2% ratio at 80% power" in text


def test_zero_shot_and_fine_tuned_costs_are_paired_per_seed(tmp_path):
    """step0_* columns are metrics of their own (paired with the baseline's step 0 of the same seed,
    Holm-adjusted in their own family); the report's recovery table reads them per position."""
    from orchestrator.analysis.formatting import recovery_rows

    rng = np.random.default_rng(3)
    rows, extra = [], ["step0_eval_loss", "step0_eval_ppl", "eval_loss_pos1", "step0_eval_loss_pos1"]
    for seed in SEEDS:
        base0, base = 4.0 + 0.1 * seed, 3.0 + 0.05 * seed  # the base's own losses, per seed
        for conf, cost0, cost in (("peak-0", 0.0, 0.0), ("peak-0.5", 0.1, 0.02), ("peak-1", 0.2, 0.05)):
            noise = rng.normal(0, 0.01, 4) * (cost > 0)
            r = trial(conf, "linear", None, seed, math.exp(base + cost + noise[0]))
            r.update(step0_eval_loss=base0 + cost0 + noise[1], eval_loss_pos1=base + 2 * cost + noise[2],
                     step0_eval_loss_pos1=base0 + 2 * cost0 + noise[3])
            r["step0_eval_ppl"] = math.exp(r["step0_eval_loss"])
            rows.append(r)
    root = str(tmp_path / "sweep")
    write_trials(root, rows, pa.schema([*TRIAL_SCHEMA, *(pa.field(c, pa.float64()) for c in extra)]))
    said = []
    out = aggregate(root, baseline="peak-0", echo=said.append)
    cells = pd.read_parquet(os.path.join(root, "summary", "cells.parquet"))
    by = {(r["configuration"], r["seed"]): r for r in rows}
    table = recovery_rows(cells)
    assert set(table.group) == {"all tokens", "first token of its block"} and len(table) == 4
    p_start = []
    for conf in ("peak-0.5", "peak-1"):
        for metric, group in (("eval_loss", "all tokens"), ("eval_loss_pos1", "first token of its block")):
            zs = np.array([by[conf, s][f"step0_{metric}"] - by["peak-0", s][f"step0_{metric}"] for s in SEEDS])
            ft = np.array([by[conf, s][metric] - by["peak-0", s][metric] for s in SEEDS])
            got = table[(table.label == f"{conf}/linear") & (table.group == group)].iloc[0]
            assert got.zs_ratio == pytest.approx(math.exp(zs.mean()))
            assert got.ft_ratio == pytest.approx(math.exp(ft.mean()))
            lo, hi = sps.t.interval(0.95, len(zs) - 1, loc=zs.mean(), scale=sps.sem(zs))
            assert (got.zs_low, got.zs_high) == (pytest.approx(math.exp(lo)), pytest.approx(math.exp(hi)))
            assert got.recovered == pytest.approx((got.zs_ratio - got.ft_ratio) / (got.zs_ratio - 1))
            if metric == "eval_loss":
                p_start.append(sps.ttest_1samp(zs, 0.0).pvalue)
                assert row(cells, conf, "linear", None, "step0_eval_loss")["p_ttest"] == pytest.approx(p_start[-1])
    holm = stats.holm(p_start)  # the step-0 family: the two compared cells, nothing else
    assert [row(cells, c, "linear", None, "step0_eval_loss")["p_holm"] for c in ("peak-0.5", "peak-1")] \
        == [pytest.approx(p) for p in holm]
    first = table[(table.group == "first token of its block") & (table.label == "peak-1/linear")].iloc[0]
    shown = "\n".join(said)  # the console: the first-token lines under the headline
    assert "first token of its block: perplexity ratio to the baseline before any update" in shown
    assert re.search(rf"peak-1/linear +{first.zs_ratio:.3f}x +\S+ +{first.ft_ratio:.3f}x", shown), shown
    headline = next(x for x in said if "first token of its block" in x)
    assert max(len(line) for line in headline.splitlines()) <= 120
    page = parse(out["report"])
    assert any("Zero-shot and fine-tuned" in h for h in page.headings)
    text = " ".join(page.text)
    assert f"{table.zs_ratio.iloc[0]:.3f}x" in text and "recovered" in text
