"""Training-step and evaluation cost of the localist attention against vanilla SDPA GPT-2.

Every variant is a real ``localist.trainer.Trainer`` at the tiny config (the built-in trial of
``localist train``: 4 layers, 128 wide, seq 128, batch 8); the vanilla one is the same trainer
with the model switched to transformers' stock ``sdpa`` attention. The timed step is the body
of ``Trainer.fit``'s loop (batch, forward, loss, backward, clipping, AdamW, scheduler). Variants
run in interleaved rounds on the same batches; a ratio is the median over rounds of the
variant's time over vanilla's in the same round, so it holds on a loaded machine even when the
absolute times do not. One torch thread by default, as in a sweep trial with 1 CPU.

    python -m benchmarks.attention_overhead [--quick] [--threads N] [--rounds N] [--steps N]

Targets: bias mechanisms <= 1.10 x vanilla (issue #6; <= 1.15 in the trainer issue).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import Row, interleaved, median, paired_ratio, print_table, silent, trial_config  # noqa: E402

QUINTIC = {"schedule": "polynomial", "power": 5, "peak": 1.0}
UNIFORM = {"schedule": "uniform", "peak": 1.0}
WINDOW = {"schedule": "polynomial", "power": 5, "peak": 1.0, "partition": "window"}
VARIANTS = {  # name -> locality section (None = vanilla SDPA GPT-2)
    "vanilla": None,
    "bias quintic": {**QUINTIC, "mechanism": "bias"},
    "bias uniform": {**UNIFORM, "mechanism": "bias"},
    "bias window": {**WINDOW, "mechanism": "bias"},
    "penalty quintic": {**QUINTIC, "mechanism": "penalty"},
    "penalty uniform": {**UNIFORM, "mechanism": "penalty"},
    "penalty window": {**WINDOW, "mechanism": "penalty"},
}
BIAS_TARGET = "<= 1.10"


def make_trainer(quick: bool, locality: dict | None, threads: int, out: str):
    from localist.trainer import Trainer

    loc = locality if locality is not None else {"peak": 0.0}
    cfg = trial_config(quick, {"locality": loc, "train": {"threads": threads, "grad_clip": 1.0}})
    tr = Trainer(cfg, out, "bench", log=silent)
    if locality is None:
        tr.model.set_attn_implementation("sdpa")  # stock GPT-2 attention; the locality kwarg is ignored
    tr.model.train()
    return tr


def train_step(tr, step: int) -> float:
    """One optimizer step exactly as ``Trainer.fit`` takes it (the trainer's own method)."""
    tr.step = step
    return tr.train_step()


def plain_eval(tr) -> None:
    """``Trainer.evaluate`` without the attention statistics: the fast path, held-out loss only."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    tr.model.eval()
    n = min(tr.cfg.data.eval_sequences, len(tr.data.eval))
    bs = tr.cfg.train.batch_size
    with torch.no_grad():
        for start in range(0, n, bs):
            seqs = torch.from_numpy(np.asarray(tr.data.eval[start:start + bs], dtype=np.int64))
            x, y = seqs[:, :-1].to(tr.device), seqs[:, 1:].to(tr.device)
            with tr.accel.autocast():
                logits = tr.model(input_ids=x, locality=tr._context(tr.eval_blocks[start:start + bs])).logits
            float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
    tr.model.train()


def run(quick: bool = False, threads: int = 1, rounds: int | None = None, steps: int | None = None,
        variants: list[str] | None = None) -> list[Row]:
    import torch

    rounds = rounds or (3 if quick else 15)
    steps = steps or (2 if quick else 5)
    names = variants or (["vanilla", "bias quintic", "penalty quintic"] if quick else list(VARIANTS))
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-attn-") as tmp:
        trainers = {n: make_trainer(quick, VARIANTS[n], threads, os.path.join(tmp, n.replace(" ", "_")))
                    for n in names}
        counters = {n: 0 for n in names}

        def stepper(name):
            tr = trainers[name]

            def go():
                for _ in range(steps):
                    train_step(tr, counters[name])
                    counters[name] += 1
            return go

        for name in names:  # warm-up: allocator, kernels, first-call caches
            for _ in range(2):
                stepper(name)()
        times = interleaved({n: stepper(n) for n in names}, rounds)
        base = median(times["vanilla"]) / steps
        cfg = trainers["vanilla"].cfg
        shape = (f"L{cfg.model.n_layer}/E{cfg.model.n_embd}/H{cfg.model.n_head} seq {cfg.data.seq_len} "
                 f"batch {cfg.train.batch_size}, {threads} thread(s)")
        rows = [Row("attention", f"train step vanilla SDPA [{shape}]", base * 1000, "ms/step")]
        for n in names[1:]:
            rows.append(Row("attention", f"train step {n} / vanilla", paired_ratio(times[n], times["vanilla"]),
                            target=BIAS_TARGET if n.startswith("bias") and not quick else ""))

        # evaluation: Trainer.evaluate (statistics, sample map) vs the same passes without them
        ev = trainers.get("bias quintic") or trainers[names[-1]]
        ev_rounds = max(3, rounds // 3)
        ev_times = interleaved({"stats": ev.evaluate, "plain": lambda: plain_eval(ev)}, ev_rounds)
        rows.append(Row("attention", "eval with statistics / plain eval (bias quintic)",
                        paired_ratio(ev_times["stats"], ev_times["plain"])))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small model, few rounds (for the test suite)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a sweep trial's default is 1)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per variant per round")
    p.add_argument("--variants", default=None, help="comma-separated subset (vanilla is always first)")
    a = p.parse_args(argv)
    names = None
    if a.variants:
        names = ["vanilla"] + [v.strip() for v in a.variants.split(",") if v.strip() and v.strip() != "vanilla"]
    rows = run(a.quick, a.threads, a.rounds, a.steps, names)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
