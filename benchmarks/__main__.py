"""Run every benchmark and print one table of ratios measured in this run.

    python -m benchmarks [--quick] [--only attention,data,aggregation,memory,sweep] [--json FILE]
    make bench

--quick runs each benchmark at a small size (the test suite does this once to check they run);
its figures are not the ones to quote. A benchmark that fails prints its error, the others
still run, and the exit code is 1. Missed targets are reported in the table, not as failures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback

from benchmarks.common import Row, machine, print_table, silent, to_json

BENCHMARKS = ("attention", "data", "aggregation", "memory", "sweep")


def aggregation(quick: bool) -> list[Row]:
    """Rows per second of ``orchestrator.analysis.aggregate`` at the aggregation issue's scale."""
    from benchmarks.aggregate_scale import TARGET_S, build_results
    from orchestrator.analysis.aggregate import aggregate

    steps, layers, seeds = (20_000, 4_000, (1, 2)) if quick else (1_000_000, 200_000, (1, 2, 3))
    root = tempfile.mkdtemp(prefix="bench-agg-")
    try:
        trials, steps, layers = build_results(root, steps=steps, layers=layers, seeds=seeds)
        t0 = time.perf_counter()
        aggregate(root, report=False, echo=silent)
        elapsed = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = steps + layers + len(trials)
    return [Row("aggregation", f"aggregate without figures, {rows:,} rows", rows / elapsed, "rows/s"),
            Row("aggregation", "aggregate without figures", elapsed, "s", "" if quick else f"< {TARGET_S:.1f}")]


def run_one(name: str, quick: bool, threads: int) -> list[Row]:
    if name == "attention":
        from benchmarks import attention_overhead

        return attention_overhead.run(quick, threads=threads)
    if name == "data":
        from benchmarks import data_cache

        return data_cache.run(quick)
    if name == "aggregation":
        return aggregation(quick)
    if name == "memory":
        from benchmarks import memory

        return memory.run(quick, threads=threads)
    if name == "sweep":
        from benchmarks import sweep_overhead

        return sweep_overhead.run(quick)
    raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: checks that everything runs")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the in-process timings")
    p.add_argument("--json", default=None, help="also write the rows and the machine here")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    before = machine()
    print(f"machine: {before['cpus']} CPUs, {before['platform']}, python {before['python']}, torch {before['torch']}; "
          f"load average {before['load_1m']} (1 min) {before['load_5m']} (5 min)"
          + ("; --quick: sizes too small for the figures to mean anything" if a.quick else ""), flush=True)
    rows: list[Row] = []
    failed = []
    for name in names:
        t0 = time.perf_counter()
        try:
            got = run_one(name, a.quick, a.threads)
        except Exception as e:
            failed.append(name)
            traceback.print_exc()
            got = [Row(name, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:150],
                       float("nan"), "")]
        rows += got
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    after = machine()
    print()
    print_table(rows)
    print(f"\nload average after: {after['load_1m']} (1 min) {after['load_5m']} (5 min)")
    if a.json:
        to_json(rows, a.json, {"machine_before": before, "quick": a.quick})
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
