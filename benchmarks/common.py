"""Shared pieces of the benchmarks: the result table, interleaved timing and tiny trial configs.

Every figure a benchmark reports is a ratio (or a rate) measured inside one run, because the
absolute speed of a shared machine moves from minute to minute: variants are timed in
interleaved rounds and compared by the median of their per-round ratios, so a burst of load
hits all of them alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

from localist.config import QUICK_TRIAL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

# The trial config of `localist train` without a file (4 layers, 128 wide, seq 128, batch 8) is
# "the tiny config"; --quick uses the test suite's smaller one (localist.config.QUICK_TRIAL) so
# the suite stays fast.
TINY_FULL: dict = {}
TINY_QUICK: dict = QUICK_TRIAL


@dataclass
class Row:
    bench: str
    measure: str
    value: float
    unit: str = "x"  # "x" = a ratio
    target: str = ""  # e.g. "<= 1.10"; empty when the figure has no target
    note: str = ""

    @property
    def status(self) -> str:
        if not self.target:
            return ""
        if self.value != self.value:  # NaN
            return "n/a"
        op, _, bound = self.target.partition(" ")
        limit = float(bound)
        ok = {"<=": self.value <= limit, "<": self.value < limit, ">=": self.value >= limit, ">": self.value > limit}[op]
        return "met" if ok else "MISSED"

    def formatted(self) -> str:
        if self.unit == "x":
            return f"{self.value:.3f}x"
        if self.unit == "s":
            return f"{self.value:.3f} s"
        if self.value != self.value or (abs(self.value) < 100 and self.value != int(self.value)):  # NaN; 3 digits
            return f"{self.value:.3g} {self.unit}"
        return f"{self.value:,.0f} {self.unit}"


def synthetic_data(shape: dict, seq: int, n: int, seed: int = 0):
    """A ``localist.data.Dataset`` of random tokens of ``shape["vocab"]`` and random sentence starts
    (one every ~20 tokens): no corpus, no tokenizer; its first two sequences are the held-out ones."""
    import numpy as np

    from localist.data import Dataset

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, shape["vocab"], (n, seq + 1), dtype=np.int32)
    starts = rng.random((n, seq)) < 1 / 20
    starts[:, 0] = True
    return Dataset(train=tokens, eval=tokens[:2], train_starts=starts, eval_starts=starts[:2],
                   vocab_size=shape["vocab"], tokenizer_path="", cached=True)


def trial_config(quick: bool, *sections: dict):
    """A validated TrialConfig: the tiny (or quick) base with the given partial trees merged in."""
    from localist.config_files import build, deep_merge

    tree = json.loads(json.dumps(TINY_QUICK if quick else TINY_FULL))
    for s in sections:
        tree = deep_merge(tree, s)
    return build(tree, "benchmark")


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Call every function once per round, in an order rotated each round; return the times (s)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num/den taken within each round (robust to load that drifts)."""
    return median([a / b for a, b in zip(num, den)])


def machine() -> dict:
    import torch

    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_1m": round(load[0], 2), "load_5m": round(load[1], 2),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def print_table(rows: list[Row], title: str = "") -> None:
    if title:
        print(title)
    head = ("benchmark", "measure", "value", "target", "status")
    body = [(r.bench, r.measure + (f" ({r.note})" if r.note else ""), r.formatted(), r.target, r.status)
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*head))
    print("  ".join("-" * w for w in widths))
    for b in body:
        print(line.format(*b))


def to_json(rows: list[Row], path: str, extra: dict | None = None) -> None:
    with open(path, "w") as f:
        json.dump({"machine": machine(), **(extra or {}),
                   "rows": [{**asdict(r), "status": r.status} for r in rows]}, f, indent=1)


def child_env(**extra: str) -> dict:
    """Environment for a benchmark's child process (``python -m benchmarks.X`` run from ROOT)."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def silent(*_args, **_kw) -> None:
    """A log function that drops everything (trainers and drivers print progress otherwise)."""
