"""The first trial's data preparation against a later trial's cached load.

A sweep tokenises its corpus once (``localist.data.prepare`` under a file lock); every later
trial memory-maps the cached arrays and derives its own block ids from the cached sentence
starts. Both sides are timed as a trial's ``Trainer`` does them: ``prepare`` plus the train and
eval block ids, on a fresh cache directory (first) and on the filled one (later, median of a
few repeats in the same process, as a reused Ray worker would run them).

    python -m benchmarks.data_cache [--quick] [--repeats N]

Target: a later trial's cached load under 1 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import Row, median, print_table, silent, trial_config  # noqa: E402


def trial_data(cfg) -> tuple[float, float]:
    """(prepare seconds, block-id seconds) for one trial's view of the data."""
    from localist.data import prepare

    t0 = time.perf_counter()
    data = prepare(cfg.data, "tiny", log=silent)
    t1 = time.perf_counter()
    data.blocks("train", cfg.locality)
    data.blocks("eval", cfg.locality)
    return t1 - t0, time.perf_counter() - t1


def run(quick: bool = False, repeats: int | None = None) -> list[Row]:
    repeats = repeats or (3 if quick else 5)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        cfg = trial_config(quick, {"data": {"cache_dir": tmp}})
        first_prep, first_blocks = trial_data(cfg)
        later = [trial_data(cfg) for _ in range(repeats)]
    later_prep = median([p for p, _ in later])
    later_blocks = median([b for _, b in later])
    first, cached = first_prep + first_blocks, later_prep + later_blocks
    chars = cfg.data.max_chars
    return [
        Row("data", f"first trial: tokenise + blocks ({chars:,} chars, seq {cfg.data.seq_len})", first, "s"),
        Row("data", "later trial: cached load + blocks", cached, "s", "" if quick else "< 1.0",
            note=f"load {later_prep:.3f} s, blocks {later_blocks:.3f} s"),
        Row("data", "later trial / first trial", cached / first),
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the test suite's small corpus")
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    rows = run(a.quick, a.repeats)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
