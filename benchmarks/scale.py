"""Thousands of trials: what the sweep's bookkeeping costs, against Ray Tune's own floor, in one run.

Two sweeps of the same size and concurrency on a local Ray, each in its own process:

- the floor: a trivial Tune function trainable (one report, no files of ours) - what Tune itself
  costs per trial;
- ours: a real sweep through ``orchestrator.sweep.driver.run`` of micro trials (1 layer, 8 wide,
  2 steps, 2 held-out sequences; one seed each, so no deduplication), the real trainable, Parquet
  and records per trial, Tune's experiment state, collect.

Then, on the finished sweep: the objects written per trial; ``collect`` + ``aggregate`` (with the
report), ``sweep status``, one ``sweep watch`` frame and their list/read calls counted on the
filesystem layer, on the local copy and on a moto S3 copy; a dry run of a 10,000-cell grid.
Every figure is measured in this run and printed as a ratio or a per-trial number:

    python -m benchmarks.scale [--trials 1000 | --quick] [--concurrency N] [--json FILE]

Targets (issue #21): overhead above Tune's floor <= 0.3 s per trial; makespan / ideal <= 1.25;
driver RSS growth <= 1 MB per trial; <= 12 storage objects per finished trial; collect +
aggregate + report <= 30 s and status <= 2 s at 1,000 trials; dry run of 10,000 cells <= 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, Row, child_env, machine, print_table, to_json  # noqa: E402

MARK = "BENCH-SCALE-RESULT "
MICRO = {"model": {"name": "tiny", "n_layer": 1, "n_embd": 8, "n_head": 1},
         "data": {"corpus": "kjv", "max_chars": 100_000, "seq_len": 16, "eval_sequences": 2, "vocab_size": 300},
         "train": {"steps": 2, "batch_size": 2, "warmup_steps": 0, "eval_every": 2, "log_every": 2},
         "locality": {"peak": 1.0, "power": 1, "min_len": 2, "max_len": 8}}
TIMING_COLUMNS = ("setup_config_s", "setup_accelerator_s", "setup_data_s", "setup_model_s", "setup_blocks_s",
                  "setup_prepare_s",
                  "wall_s", "report_s", "outputs_s")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Rss(threading.Thread):
    """Samples this process's resident memory twice a second: peak and the series."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.samples.append((time.time(), _rss_mb()))


# -- the floor: Tune alone -----------------------------------------------------------------------


def floor_child(trials: int, concurrency: int) -> dict:
    import ray
    from ray import tune

    def trivial(config):
        tune.report({"done": 1, "t": time.time(), "worker": os.getpid()})

    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        ray.init(num_cpus=concurrency, include_dashboard=False, log_to_driver=False)
        tuner = tune.Tuner(
            trivial, param_space={"i": tune.grid_search(list(range(trials)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tmp, name="floor", verbose=0))
        fit_at = time.time()
        t0 = time.perf_counter()
        grid = tuner.fit()
        makespan = time.perf_counter() - t0
        errors = sum(r.error is not None for r in grid)
        df = grid.get_dataframe()
        first, workers = float(df["t"].min()), int(df["worker"].nunique())
        ray.shutdown()
    return {"trials": trials, "makespan_s": makespan, "errors": errors, "first_trial_s": first - fit_at,
            "workers": workers}


# -- ours: the real sweep --------------------------------------------------------------------------


def sweep_spec(storage: str, trials: int, concurrency: int) -> dict:
    """`trials` runs (rounded down to even): the baseline and one localist cell, trials/2 seeds each."""
    return {"name": "scale", "storage": storage, "base": MICRO,
            "grid": {"configuration": {"peak-0": {"locality": {"peak": 0.0}}, "peak-1": {}}, "schedule": {"linear": {}},
                     "seeds": list(range(1, trials // 2 + 1))},
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": concurrency, "retries": 0, "checkpoint_every": 0}


def ours_child(trials: int, concurrency: int, keep: str) -> dict:
    """The real sweep into `keep` (left for the analysis child), timed inside the driver's process."""
    import re

    from ray.tune.execution.tune_controller import TuneController

    from orchestrator.spec import validate
    from orchestrator.sweep import driver

    saves = {"n": 0, "s": 0.0}
    original = TuneController.save_to_dir

    def timed_save(self):  # Tune's experiment-state snapshot, as often as Tune takes it
        t = time.perf_counter()
        original(self)
        saves["n"] += 1
        saves["s"] += time.perf_counter() - t

    TuneController.save_to_dir = timed_save
    from ray import tune

    fit_at = []
    original_fit = tune.Tuner.fit

    def timed_fit(self):  # when Tune starts: the first trial's delay after it is the one-off worker start
        fit_at.append(time.time())
        return original_fit(self)

    tune.Tuner.fit = timed_fit
    os.environ.setdefault("RAY_NUM_CPUS", str(concurrency))
    spec = validate(sweep_spec(keep, trials, concurrency), "<benchmark>")
    from localist.config_files import build
    from localist.data import prepare

    prepare(build(MICRO, "<benchmark>").data, "tiny", log=lambda *a: None)  # warm cache: the start is timed warm
    lines: list[str] = []
    rss = _Rss()
    rss.start()
    rss0 = _rss_mb()
    started = time.time()
    t0 = time.perf_counter()
    code = driver.run(spec, "<benchmark>", log=lambda m: lines.append(str(m)), aggregate=False, progress_every=3600)
    total = time.perf_counter() - t0
    rss.halt.set()
    found = [float(m.group(1)) for m in (re.search(r"Ray Tune finished in ([0-9.]+)s", x) for x in lines) if m]
    if code != 0 or not found:
        raise RuntimeError(f"sweep failed (exit {code}):\n" + "\n".join(lines)[-3000:])
    samples = [r for _, r in rss.samples]
    return {"makespan_s": found[-1], "driver_total_s": total, "rss_start_mb": rss0,
            "rss_peak_mb": max(samples, default=rss0), "rss_end_mb": _rss_mb(),
            "rss_series": rss.samples, "state_saves": saves["n"], "state_save_s": saves["s"], "sweep_uri": spec.uri,
            "started_at": started, "fit_at": fit_at[0]}


def rss_growth(series: list[tuple[float, float]], ends: list[float]) -> tuple[float, float, float]:
    """Driver RSS growth per trial while trials finish: the RSS when a tenth of them had finished
    against the RSS when the last one had (start-up imports and Ray's start are before the first)."""
    ends = sorted(ends)
    if len(ends) < 10 or not series:
        return float("nan"), float("nan"), float("nan")
    t10, t_end = ends[len(ends) // 10], ends[-1]

    def at(t: float) -> float:
        before = [mb for ts, mb in series if ts <= t]
        return before[-1] if before else series[0][1]

    a, b = at(t10), at(t_end)
    return (b - a) / (len(ends) - len(ends) // 10 - 1), a, b


# -- analysis of the finished sweep ------------------------------------------------------------------


class _Counting:
    """Counts the calls made through ``localist.io`` on each filesystem (list, info, read, write)."""

    def __init__(self):
        self.calls: Counter = Counter()

    def __enter__(self):
        import pyarrow.fs as pafs

        from localist import io

        self._orig = io.resolve
        calls = self.calls

        class Handler(pafs.FileSystemHandler):
            def __init__(self, fs):
                self.fs = fs

            def __eq__(self, other):
                return isinstance(other, Handler) and self.fs.equals(other.fs)

            def __ne__(self, other):
                return not self == other

            def get_type_name(self):
                return "counting+" + self.fs.type_name

            def normalize_path(self, path):
                return self.fs.normalize_path(path)

            def get_file_info(self, paths):
                calls["info"] += len(paths)
                return self.fs.get_file_info(paths)

            def get_file_info_selector(self, selector):
                calls["list"] += 1
                return self.fs.get_file_info(selector)

            def create_dir(self, path, recursive):
                calls["write"] += 1
                self.fs.create_dir(path, recursive=recursive)

            def delete_dir(self, path):
                calls["write"] += 1
                self.fs.delete_dir(path)

            def delete_dir_contents(self, path, missing_dir_ok=False):
                calls["write"] += 1
                self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

            def delete_root_dir_contents(self):
                self.fs.delete_dir_contents("/", accept_root_dir=True)

            def delete_file(self, path):
                calls["write"] += 1
                self.fs.delete_file(path)

            def move(self, src, dest):
                calls["write"] += 1
                self.fs.move(src, dest)

            def copy_file(self, src, dest):
                calls["write"] += 1
                self.fs.copy_file(src, dest)

            def open_input_stream(self, path):
                calls["read"] += 1
                return self.fs.open_input_stream(path)

            def open_input_file(self, path):
                calls["read"] += 1
                return self.fs.open_input_file(path)

            def open_output_stream(self, path, metadata):
                calls["write"] += 1
                return self.fs.open_output_stream(path, metadata=metadata)

            def open_append_stream(self, path, metadata):
                calls["write"] += 1
                return self.fs.open_append_stream(path, metadata=metadata)

        def resolve(uri):
            fs, path = self._orig(uri)
            return pafs.PyFileSystem(Handler(fs)), path

        io.resolve = resolve
        return self

    def __exit__(self, *exc):
        from localist import io

        io.resolve = self._orig


def _timed(fn) -> tuple[float, dict]:
    with _Counting() as c:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t, dict(c.calls)


def layout_spec(sweep_uri: str):
    from orchestrator.spec import load_saved

    return load_saved(sweep_uri)


def _reads(sweep_uri: str, with_aggregate: bool) -> dict:
    """collect (+ aggregate with the report), `sweep status`, one `sweep watch` frame on one copy."""
    import contextlib
    import io as stdio

    from rich.console import Console

    from orchestrator import cli
    from orchestrator.analysis.aggregate import aggregate
    from orchestrator.spec import expand
    from orchestrator.sweep import watch
    from orchestrator.sweep.collect import collect

    spec = layout_spec(sweep_uri)
    trials = expand(spec, sweep_uri)
    sink = stdio.StringIO()
    out = {}
    out["collect_s"], out["collect_calls"] = _timed(lambda: collect(spec, trials, sweep_uri))
    if with_aggregate:
        out["aggregate_s"], out["aggregate_calls"] = _timed(lambda: aggregate(sweep_uri, report=True, echo=lambda *a: None))
    with contextlib.redirect_stdout(sink):
        out["status_s"], out["status_calls"] = _timed(lambda: cli.main(["sweep", "status", sweep_uri]))
    out["watch_s"], out["watch_calls"] = _timed(
        lambda: watch.watch(sweep_uri, once=True, console=Console(file=sink, width=160)))
    return out


def _objects(sweep_uri: str) -> tuple[int, int, Counter]:
    """Files under the sweep folder, in trials/ and elsewhere, by kind."""
    from localist import io

    fs, root = io.resolve(sweep_uri)
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = [i.path[len(root):].lstrip("/") for i in infos if i.type == pafs.FileType.File]
    kinds = Counter(f.split("/")[0] for f in files)
    return len(files), sum(f.startswith("trials/") for f in files), kinds


def _dry_run_10k() -> float:
    from orchestrator.spec import expand, validate
    from orchestrator.sweep.dryrun import render

    spec = validate({"name": "dry10k", "storage": tempfile.gettempdir(), "base": MICRO,
                     "grid": {"configuration": {f"peak-{i}": {"locality": {"peak": (i + 1) / 100}} for i in range(100)},
                              "schedule": {"linear": {"locality": {"power": 1}}},
                              "seeds": list(range(100))}}, "<benchmark>")
    t = time.perf_counter()
    render(spec, expand(spec, "<benchmark>"))
    return time.perf_counter() - t


@contextlib.contextmanager
def _moto():
    """An S3-compatible server (moto) on 127.0.0.1 in this process, stopped at the end; yields a sweep URI there."""
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
        pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                          endpoint_override=f"{host}:{port}", allow_bucket_creation=True).create_dir("bench")
        yield "s3://bench/scale"
    finally:
        server.stop()


def analysis_child(sweep_uri: str) -> dict:
    import pandas as pd

    from localist import io
    from orchestrator import layout
    res = {"local": _reads(sweep_uri, with_aggregate=True)}
    n_files, n_trial_files, kinds = _objects(sweep_uri)
    df = pd.read_parquet(io.resolve(layout.results_file(sweep_uri, "trials"))[1])
    res["trials_completed"] = int((df["status"] == "completed").sum())
    res["files"], res["trial_files"], res["files_by_folder"] = n_files, n_trial_files, dict(kinds)
    res["timings"] = {c: float(df[c].mean()) for c in TIMING_COLUMNS if c in df}
    res["wall_sum_s"] = float(df["wall_s"].sum())
    res["first_step_at"] = float(df["first_step_at"].min())
    res["starts"] = _worker_starts(sweep_uri, df)
    with _moto() as uri:  # the same sweep copied to S3: the read paths' calls and times there
        import pyarrow.fs as pafs

        fs, path = io.resolve(uri)
        pafs.copy_files(io.resolve(sweep_uri)[1], path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        res["s3"] = _reads(uri, with_aggregate=False)
    res["dry_run_10k_s"] = _dry_run_10k()
    return res


def _worker_starts(sweep_uri: str, df) -> dict:
    """Per worker process: its first trial's start after the first trial of the sweep began, and the
    gap between one trial's end (trial.parquet written) and the next trial's start on it."""
    from localist import io, trial_files
    from orchestrator import layout

    per: dict[int, list[tuple[float, float]]] = {}
    for run_id in df["run_trial_id"].unique():
        d = layout.trial_dir(sweep_uri, run_id)
        a = trial_files.read_attempt(d, 1)
        end = os.path.getmtime(io.resolve(io.join(d, trial_files.TRIAL))[1])
        per.setdefault(a["pid"], []).append((a["time"], end))
    t0 = min(s for v in per.values() for s, _ in v)
    gaps = [b[0] - a[1] for v in per.values() for a, b in zip(sorted(v), sorted(v)[1:])]
    return {"workers": len(per), "first_start_s": [min(s for s, _ in v) - t0 for v in per.values()],
            "gap_mean_s": sum(gaps) / len(gaps) if gaps else float("nan"),
            "ends": [e for v in per.values() for _, e in v], "first_at": t0,
            "span_sum_s": sum(e - s for v in per.values() for s, e in v)}


# -- the run ------------------------------------------------------------------------------------------


def _child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(RAY_AUTH_MODE="disabled"), capture_output=True, text=True,
                       timeout=timeout)
    found = [ln for ln in p.stdout.splitlines() if ln.startswith(MARK)]
    if p.returncode or not found:
        raise RuntimeError(f"scale child {args[0]} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(found[-1][len(MARK):])


def run(trials: int, concurrency: int, quick: bool = False) -> tuple[list[Row], dict]:
    timeout = 600 + 3 * trials
    trials -= trials % 2
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as keep:
        t = time.perf_counter()
        floor = _child(["floor", str(trials), str(concurrency)], timeout)
        print(f"[scale] Tune's floor: {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        ours = _child(["ours", str(trials), str(concurrency), keep], timeout)
        print(f"[scale] our sweep: {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        an = _child(["analysis", ours["sweep_uri"]], timeout)
        print(f"[scale] reads, S3 copy and dry run: {time.perf_counter() - t:.0f} s", flush=True)
    n = an["trials_completed"]
    # Per trial and worker: each sweep's makespan x the worker processes that ran its trials / trials.
    # (Trials shorter than a worker's start run on fewer workers than slots: Tune hands the next trial
    # to the warm actor and cancels the start of another.)
    w_ours, w_floor = an["starts"]["workers"], floor["workers"]
    cost_ours, cost_floor = ours["makespan_s"] * w_ours / trials, floor["makespan_s"] * w_floor / trials
    ours_first = an["starts"]["first_at"] - ours["fit_at"]  # fit start to the first trial's start
    steady = ((ours["makespan_s"] - ours_first) * w_ours - (floor["makespan_s"] - floor["first_trial_s"]) * w_floor) / trials
    ideal = an["starts"]["span_sum_s"] / w_ours
    growth, rss_a, rss_b = rss_growth(ours["rss_series"], an["starts"]["ends"])
    t = an["timings"]
    loc, s3 = an["local"], an["s3"]

    def calls(c: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

    target = (lambda x: "") if quick else (lambda x: x)
    rows = [
        Row("scale", f"trials completed ({trials} micro trials, {concurrency} at a time)", n, "trials",
            target=target(f">= {trials}")),
        Row("scale", "Tune's floor per trial: trivial trainable, makespan x workers / trials", cost_floor, "s",
            note=f"{w_floor} worker(s) ran its trials"),
        Row("scale", "our overhead above Tune's floor per trial (makespan x workers / trials, ours - floor)",
            cost_ours - cost_floor, "s", target=target("<= 0.3"),
            note=f"makespan ours {ours['makespan_s']:.1f} s on {w_ours} worker(s), floor {floor['makespan_s']:.1f} s "
                 f"on {w_floor}, of {concurrency} slots"),
        Row("scale", "  the same without each sweep's one-off first-trial delay", steady, "s",
            note=f"first trial {ours_first:.1f} s after fit began (ours) and {floor['first_trial_s']:.1f} s (floor): "
                 "worker processes importing torch and transformers"),
        Row("scale", "makespan ratio ours / floor at the same slots", ours["makespan_s"] / floor["makespan_s"]),
        *[Row("scale", f"  trial's {c.replace('_s', '').replace('_', ' ')} (mean)", t[c], "s") for c in TIMING_COLUMNS if c in t],
        Row("scale", "  worker start: a worker's first trial after the sweep's first", max(an["starts"]["first_start_s"]), "s",
            note=f"{an['starts']['workers']} worker processes"),
        Row("scale", "  gap between trials on one worker (final report, Tune bookkeeping, next config)",
            an["starts"]["gap_mean_s"], "s"),
        Row("scale", "sweep start (driver.run) to the first training step, warm data cache",
            an["first_step_at"] - ours["started_at"], "s", target=target("<= 10")),
        Row("scale", "makespan / ideal (ideal: the trials' own time, trainable start to result, / workers)",
            ours["makespan_s"] / ideal,
            target=target("<= 1.25")),
        Row("scale", "driver RSS growth per trial, from a tenth of the trials done to the last", growth, "MB",
            target=target("<= 1"), note=f"{rss_a:.0f} -> {rss_b:.0f} MB; process start {ours['rss_start_mb']:.0f} MB, "
                                        f"peak {ours['rss_peak_mb']:.0f}"),
        Row("scale", "Tune experiment-state snapshots: time per snapshot", ours["state_save_s"] / max(ours["state_saves"], 1),
            "s", note=f"{ours['state_saves']} snapshots, {ours['state_save_s']:.1f} s in all"),
        Row("scale", "storage objects per finished trial (sweep folder / trials)", an["files"] / max(n, 1), "objects",
            target=target("<= 12"), note=f"trials/ {an['trial_files'] / max(n, 1):.1f} each; by folder {an['files_by_folder']}"),
        Row("scale", f"collect at {n} trials (local)", loc["collect_s"], "s", note=calls(loc["collect_calls"])),
        Row("scale", f"collect + aggregate + report at {n} trials (local)", loc["collect_s"] + loc["aggregate_s"], "s",
            target=target("<= 30"), note="aggregate: " + calls(loc["aggregate_calls"])),
        Row("scale", f"sweep status at {n} trials (local)", loc["status_s"], "s", target=target("<= 2"),
            note=calls(loc["status_calls"])),
        Row("scale", f"sweep status at {n} trials (moto S3)", s3["status_s"], "s", target=target("<= 2"),
            note=calls(s3["status_calls"])),
        Row("scale", f"one sweep watch frame at {n} trials (local / S3)", loc["watch_s"], "s",
            note=f"S3 {s3['watch_s']:.2f} s; local {calls(loc['watch_calls'])}; S3 {calls(s3['watch_calls'])}"),
        Row("scale", f"collect at {n} trials (moto S3)", s3["collect_s"], "s", note=calls(s3["collect_calls"])),
        Row("scale", "dry run of a 10,000-cell grid", an["dry_run_10k_s"], "s", target=target("<= 10")),
    ]
    return rows, {"floor": floor, "ours": {k: v for k, v in ours.items() if k != "rss_series"}, "analysis": an}


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="200 trials (the test suite runs fewer with --trials)")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 2, help="trials at once (default: CPUs)")
    p.add_argument("--json", default=None, help="also write the rows and raw figures to this file")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        kind, *rest = a.child
        fn = {"floor": lambda: floor_child(int(rest[0]), int(rest[1])),
              "ours": lambda: ours_child(int(rest[0]), int(rest[1]), rest[2]),
              "analysis": lambda: analysis_child(rest[0])}[kind]
        print(MARK + json.dumps(fn()), flush=True)
        return []
    trials = 200 if a.quick and a.trials == 1000 else a.trials
    print(f"machine: {json.dumps(machine())}", flush=True)
    rows, raw = run(trials, a.concurrency, quick=a.quick)
    print_table(rows, f"scale: {trials} trials, {a.concurrency} at a time")
    if a.json:
        to_json(rows, a.json, raw)
    return rows


if __name__ == "__main__":
    main()
