"""Peak memory of one trial, localist variants against vanilla SDPA GPT-2.

Each variant runs in its own process, so every peak is its own (as many at once as there are
CPUs, which changes no process's peak): a ``Trainer`` at the tiny config is built, the
process's resident-set high-water mark is reset, then it trains a few steps and evaluates once
(``Trainer.evaluate`` with statistics; vanilla runs the same passes without them, as stock SDPA
has no attention maps to measure). Two figures per variant:

- whole-process peak RSS (what ``trial.parquet``'s ``peak_mem_mb`` reports on CPU), dominated
  at the tiny scale by the imported libraries; read from the kernel's VmHWM, because
  ``ru_maxrss`` of a child process also counts the parent's resident pages at fork time;
- the training peak above the RSS after setup: what the attention variant actually changes.

GPU memory (``torch.cuda.max_memory_allocated``) per variant is reported by gpu_check.py.

    python -m benchmarks.memory [--quick] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, Row, child_env, print_table  # noqa: E402



def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_high_water() -> bool:
    """Reset the kernel's VmHWM (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(variant: str, quick: bool, steps: int, threads: int) -> dict:
    """Runs in the subprocess: build, reset the high-water mark, train, evaluate, report."""
    import torch

    from benchmarks.attention_overhead import VARIANTS, make_trainer, plain_eval, train_step

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        tr = make_trainer(quick, VARIANTS[variant], threads, tmp)
        setup_kb = _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        setup_hwm_kb = _status_kb("VmHWM")
        reset = _reset_high_water()
        for step in range(steps):
            train_step(tr, step)
        if variant == "vanilla":
            plain_eval(tr)
        else:
            tr.evaluate()
        hwm_kb = _status_kb("VmHWM") if reset else None
    if hwm_kb is not None and setup_hwm_kb is not None:
        process_kb = max(setup_hwm_kb, hwm_kb)
    else:  # ru_maxrss also counts the parent's pages at fork: only a fallback
        process_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "process_peak_mb": process_kb / 1024, "setup_mb": setup_kb / 1024,
            "train_peak_above_setup_mb": (hwm_kb - setup_kb) / 1024 if hwm_kb is not None else float("nan")}


def measure(variants: list[str], quick: bool, steps: int, threads: int, repeats: int = 1) -> dict[str, dict]:
    """`repeats` child processes per variant, as many at a time as there are CPUs (peaks are per
    process); per variant the run with the lowest training peak (noise only ever adds to a peak:
    when the allocator hands memory back to the system varies from run to run)."""
    env = child_env()

    def one(variant: str) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.memory", "--child", variant, "--steps", str(steps),
               "--threads", str(threads)] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {variant!r} failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    jobs = [v for _ in range(repeats) for v in variants]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, jobs))
    return {v: min((r for r in results if r["variant"] == v), key=lambda r: r["train_peak_above_setup_mb"])
            for v in variants}


def run(quick: bool = False, steps: int | None = None, threads: int = 1,
        variants: list[str] | None = None, repeats: int | None = None) -> list[Row]:
    from benchmarks.attention_overhead import VARIANTS

    steps = steps or (3 if quick else 10)
    names = variants or (["vanilla", "bias quintic"] if quick else list(VARIANTS))
    res = measure(names, quick, steps, threads, repeats or (1 if quick else 2))
    base = res["vanilla"]
    rows = [Row("memory", "vanilla: process peak RSS", base["process_peak_mb"], "MB",
                note=f"training peak {base['train_peak_above_setup_mb']:.0f} MB above setup"),]
    for n in names[1:]:
        r = res[n]
        rows.append(Row("memory", f"{n} / vanilla: process peak RSS", r["process_peak_mb"] / base["process_peak_mb"]))
        rows.append(Row("memory", f"{n} / vanilla: training peak above setup",
                        r["train_peak_above_setup_mb"] / base["train_peak_above_setup_mb"],
                        note=f"{r['train_peak_above_setup_mb']:.0f} MB"))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small model (for the test suite)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="child processes per variant (default 2)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.quick, a.steps or 3, a.threads)))
        return []
    rows = run(a.quick, a.steps, a.threads, repeats=a.repeats)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
