"""GPU check: localist vs vanilla GPT-2 small training throughput, MFU, memory and GPU sharing.

Self-contained for a bare GPU machine: needs only torch, transformers, numpy and this
repository's ``localist.attention`` / ``localist.flex`` / ``localist.blocks`` (no Ray, pydantic,
Accelerate, corpus or download). The model is GPT-2 small's shape (12 layers, 768 wide, 12
heads, vocabulary 50257) with random init from ``GPT2Config`` and dropout 0 (the project's
default); the data are random tokens with random semantic blocks (sentence starts every ~20
tokens on average, blocks of 8..64 tokens, as the default partitioner makes them). A step is
the trainer's: bf16 autocast forward, fp32 cross-entropy, backward, gradient clipping at 1.0,
fused AdamW. Modes (default: all, in this order, in well under 5 minutes on an H100):

- ``verify``: FlexAttention against the SDPA-mask path on the same queries, keys and values
  (outputs and gradients), soft and hard, semantic blocks and window;
- ``trainer``: seq 512, batch 8, 30 timed steps: vanilla vs localist (bias, quintic, peak 1):
  tokens/s, the ratio, peak memory (the trainer issue's GPU check);
- ``throughput``: seq 1024, bf16, the largest batch of 32/16/8 that fits (or ``--batch``):
  tokens/s and model FLOPs utilisation of vanilla, bias quintic, uniform strict and window
  (each localist one with FlexAttention, and quintic also with the SDPA masks); ``--compile``
  adds torch.compile'd vanilla and quintic;
- ``sweep``: 3 trials (bias quintic, seq 512, batch 8) sharing one GPU at once (what Ray Tune
  does with ``resources: {gpu: 0.33}``: fractional GPUs only co-locate processes) vs the same 3
  one after another, each in its own process.

    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check [--mode verify,trainer,throughput,sweep]
        [--batch N] [--compile] [--peak-tflops T] [--json FILE]
    python -m benchmarks.gpu_check --dry      # tiny shapes on CPU: checks the script runs
    bash benchmarks/gpu_check.sh              # the lent-GPU command (writes $OUT/gpu_check.*)

Targets (issue #6): localist >= 0.90 x vanilla tokens/s; vanilla >= 35% MFU on an H100.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
import warnings

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import ROOT, child_env  # noqa: E402
from localist import flex  # noqa: E402
from localist.attention import NAME, LocalityContext, register  # noqa: E402
from localist.blocks import semantic_blocks  # noqa: E402

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab": 50257}
DRY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab": 256}
# name -> (schedule, window or None, use FlexAttention); None schedule = vanilla SDPA GPT-2
VARIANTS = {
    "vanilla": (None, None, False),
    "bias quintic": ("quintic", None, True),
    "bias uniform strict": ("uniform", None, True),
    "bias window": ("quintic", 32, True),
    "bias quintic, SDPA masks": ("quintic", None, False),
}
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0))


def lambdas(schedule: str | None, n_layer: int) -> list[float]:
    """Peak 1: quintic (l / (L-1))^5 or uniform (the formulas of localist.schedules)."""
    if schedule is None:
        return [0.0] * n_layer
    if schedule == "uniform":
        return [1.0] * n_layer
    return [(layer / (n_layer - 1)) ** 5 for layer in range(n_layer)]


def random_blocks(batch: int, seq: int, rng: np.random.Generator, min_len: int = 8, max_len: int = 64):
    starts = rng.random((batch, seq)) < 1 / 20
    return torch.from_numpy(np.stack([semantic_blocks(s, min_len, max_len) for s in starts]).astype(np.int64))


def build(shape: dict, seq: int, vanilla: bool, device, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    register()
    cfg = GPT2Config(vocab_size=shape["vocab"], n_positions=seq, n_embd=shape["n_embd"], n_layer=shape["n_layer"],
                     n_head=shape["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    model.set_attn_implementation("sdpa" if vanilla else NAME)
    model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    return model, opt


class Batches:
    """A few fixed random batches (tokens, targets, blocks), cycled: no data loading in the timing."""

    def __init__(self, n: int, batch: int, seq: int, vocab: int, device, seed: int = 0):
        rng = np.random.default_rng(seed)
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
            self.items.append((ids[:, :-1].to(device), ids[:, 1:].to(device), random_blocks(batch, seq, rng).to(device)))
        self.i = 0

    def next(self):
        self.i += 1
        return self.items[self.i % len(self.items)]


def train_step(model, opt, batch, lams, window, bf16: bool, vanilla: bool, compiled=None) -> torch.Tensor:
    x, y, blocks = batch
    kw = {} if vanilla else {"locality": LocalityContext(lambdas=lams, block=None if window else blocks,
                                                          window=window)}
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = (compiled or model)(input_ids=x, **kw).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(model, seq: int) -> float:
    """6N + 12 L E T (nanoGPT's estimate; N without position embeddings, the tied head once)."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * c.n_layer * c.n_embd * seq


def peak_flops(device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def measure(name: str, shape: dict, seq: int, batch: int, steps: int, warmup: int, device, bf16: bool,
            compile_model: bool = False) -> dict:
    """Build one variant, warm it up, time `steps` steps; tokens/s, peak memory, FLOPs/token."""
    schedule, window, use_flex = VARIANTS[name]
    vanilla = schedule is None
    flex.set_enabled(use_flex)
    model, opt = build(shape, seq, vanilla, device)
    compiled = torch.compile(model) if compile_model else None
    lams = lambdas(schedule, shape["n_layer"])
    data = Batches(4, batch, seq, shape["vocab"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        train_step(model, opt, data.next(), lams, window, bf16, vanilla, compiled)
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        loss = train_step(model, opt, data.next(), lams, window, bf16, vanilla, compiled)
    sync(device)
    elapsed = time.perf_counter() - t1
    out = {"variant": name + (" +compile" if compile_model else ""), "seq": seq, "batch": batch, "steps": steps,
           "tokens_per_s": steps * batch * seq / elapsed, "step_ms": 1000 * elapsed / steps,
           "warmup_s": t1 - t0, "loss": loss.item(), "flops_per_token": flops_per_token(model, seq),
           "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
           "flex": use_flex and flex.enabled() and device.type == "cuda", "flex_failed": flex.failure()}
    del model, opt, compiled, data
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    flex.set_enabled(True)
    return out


def fits(shape: dict, seq: int, batch: int, device, bf16: bool) -> bool:
    """Whether a vanilla training step at this batch fits in the GPU's memory."""
    ok = True
    try:
        measure("vanilla", shape, seq, batch, 1, 1, device, bf16)
    except torch.OutOfMemoryError:
        ok = False
    gc.collect()  # outside the except block, so the failed step's frames are gone
    torch.cuda.empty_cache()
    return ok


def report(rows: list[dict], peak: float | None, title: str) -> None:
    print(f"\n== {title}")
    base = next((r for r in rows if r["variant"] == "vanilla"), rows[0])
    print(f"{'variant':32s} {'tokens/s':>10s} {'/vanilla':>8s} {'step ms':>8s} {'MFU':>6s} {'peak GB':>8s}")
    for r in rows:
        r["ratio_vs_vanilla"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / peak if peak else float("nan")
        flag = "" if not r.get("flex_failed") else "  (FlexAttention failed: SDPA used)"
        print(f"{r['variant']:32s} {r['tokens_per_s']:10,.0f} {r['ratio_vs_vanilla']:8.3f} {r['step_ms']:8.1f} "
              f"{r['mfu']:6.1%} {r['peak_mem_gb']:8.2f}{flag}")


# -- modes ---------------------------------------------------------------------------------------


def verify(device, dry: bool, bf16: bool) -> list[dict]:
    """FlexAttention against the SDPA-mask path on the same q, k, v: outputs and gradients.

    At the trainer check's attention shape (batch 8, 12 heads, seq 512, head dim 64, bf16) so
    the compiled kernels are reused there. On CPU (--dry) FlexAttention has no backward and
    runs eagerly, so only the forward is compared, in fp32.
    """
    from localist.attention import _sdpa

    B, H, T, D = (2, 2, 64, 16) if dry else (8, 12, 512, 64)
    dtype = torch.bfloat16 if bf16 else torch.float32
    grads = device.type == "cuda"
    g = torch.Generator().manual_seed(5)
    qkv = [torch.randn(B, H, T, D, generator=g).to(device, dtype) for _ in range(3)]
    probe = torch.randn(B, T, H, D, generator=g).to(device, dtype)
    blocks = random_blocks(B, T, np.random.default_rng(5)).to(device)
    out = []
    for name, lam, window in (("soft 0.5, semantic", 0.5, None), ("hard, semantic", 1.0, None),
                              ("soft 0.5, window 32", 0.5, 32), ("hard, window 32", 1.0, 32)):
        res = {}
        try:
            for use_flex in (False, True):
                q, k, v = (t.detach().clone().requires_grad_(grads) for t in qkv)
                ctx = LocalityContext(lambdas=[lam], block=None if window else blocks, window=window)
                with torch.set_grad_enabled(grads):
                    if use_flex:
                        o = flex.attention(ctx, lam, q, k, v, 1 / math.sqrt(D), compiled=device.type == "cuda")
                    else:
                        o = _sdpa(q, k, v, ctx.mask(lam, T, device, dtype), 0.0, 1 / math.sqrt(D), False)
                    if grads:
                        (o.float() * probe.float()).sum().backward()
                res[use_flex] = (o.detach().float(), [t.grad.float() for t in (q, k, v)] if grads else [])
        except Exception as e:  # report and go on: the timings still run (on SDPA if flex fails there too)
            out.append({"case": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]})
            print(f"verify FlexAttention vs SDPA mask, {name:20s} ERROR {out[-1]['error']}", flush=True)
            continue
        fwd = float((res[True][0] - res[False][0]).abs().max())
        bwd = max((float((a - b).abs().max() / b.abs().max()) for a, b in zip(res[True][1], res[False][1])),
                  default=float("nan"))
        tol, grad_tol = (3e-2, 5e-2) if dtype == torch.bfloat16 else (1e-4, 1e-4)
        row = {"case": name, "fwd_max_abs_diff": fwd, "grad_max_rel_diff": bwd, "dtype": str(dtype),
               "ok": fwd < tol and (not grads or bwd < grad_tol)}
        out.append(row)
        print(f"verify FlexAttention vs SDPA mask, {name:20s} fwd max |diff| {fwd:.2e} "
              + (f"grad max rel diff {bwd:.2e}" if grads else "(forward only: FlexAttention has no CPU backward)")
              + f" {str(dtype).removeprefix('torch.')} {'ok' if row['ok'] else 'MISMATCH'}", flush=True)
    return out


def sweep_child(args) -> None:
    """One 'trial' of the sharing test: build, train, print its own timing as JSON."""
    device = torch.device(args.device)
    shape = DRY if args.dry else GPT2_SMALL
    if args.dry and device.type == "cpu":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    r = measure("bias quintic", shape, args.seq, args.batch, args.steps, 3, device, device.type == "cuda")
    r["wall_s"] = time.perf_counter() - t0
    print("SWEEP-TRIAL " + json.dumps(r), flush=True)


def sweep(device, dry: bool, seq: int, batch: int, steps: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--sweep-child", "--device", device.type,
           "--seq", str(seq), "--batch", str(batch), "--steps", str(steps)] + (["--dry"] if dry else [])
    env = child_env()

    def launch():
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def collect(p) -> dict:
        so, se = p.communicate(timeout=900)
        lines = [ln for ln in so.splitlines() if ln.startswith("SWEEP-TRIAL ")]
        if p.returncode or not lines:
            raise RuntimeError(f"sweep trial failed ({p.returncode}):\n{se[-2000:]}")
        return json.loads(lines[-1][len("SWEEP-TRIAL "):])

    t0 = time.perf_counter()
    seq_trials = [collect(launch()) for _ in range(3)]
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [launch() for _ in range(3)]
    conc_trials = [collect(p) for p in procs]
    concurrent = time.perf_counter() - t0
    res = {"sequential_s": sequential, "concurrent_s": concurrent, "speedup": sequential / concurrent,
           "trial_tokens_per_s_alone": float(np.mean([t["tokens_per_s"] for t in seq_trials])),
           "trial_tokens_per_s_shared": float(np.mean([t["tokens_per_s"] for t in conc_trials])),
           "peak_mem_gb_each": max(t["peak_mem_gb"] for t in conc_trials)}
    print(f"\n== sweep: 3 trials (bias quintic, seq {seq}, batch {batch}, {steps} steps), one process each")
    print(f"one after another: {sequential:.1f} s; sharing one GPU at once: {concurrent:.1f} s "
          f"-> {res['speedup']:.2f}x faster; per-trial training tokens/s alone "
          f"{res['trial_tokens_per_s_alone']:,.0f}, shared {res['trial_tokens_per_s_shared']:,.0f} "
          f"(x3 = {3 * res['trial_tokens_per_s_shared'] / res['trial_tokens_per_s_alone']:.2f} of one alone)")
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="verify,trainer,throughput,sweep")
    p.add_argument("--dry", action="store_true", help="tiny shapes and 2 steps (CPU); checks the script runs")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batch", type=int, default=None, help="throughput batch (default: 32/16/8, what fits)")
    p.add_argument("--seq", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 30 / 20)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd vanilla and quintic")
    p.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak for MFU (default by name)")
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--sweep-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.sweep_child:
        sweep_child(a)
        return {}
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    threads = torch.get_num_threads()
    try:
        return run_modes(a)
    finally:
        torch.set_num_threads(threads)


def run_modes(a) -> dict:
    device = torch.device(a.device)
    if a.dry and device.type == "cpu":
        torch.set_num_threads(1)  # a dry run only checks the script; one thread is steadier on a busy CPU
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    shape = DRY if a.dry else GPT2_SMALL
    peak = peak_flops(device, a.peak_tflops)
    t_all = time.perf_counter()
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "bf16": bf16, "flex_available": flex.available(),
            "peak_tflops": peak / 1e12 if peak else None, "shape": shape}
    print(json.dumps(info), flush=True)
    result: dict = {"info": info}

    def save() -> None:  # after every mode, so a run cut short still leaves its figures
        result["wall_s"] = time.perf_counter() - t_all
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1, default=str)

    modes = a.mode.split(",")
    warm = 1 if a.dry else 5
    if "verify" in modes:
        result["verify"] = verify(device, a.dry, bf16)
        save()
    if "trainer" in modes:
        seq, batch, steps = (64, 2, a.steps or 2) if a.dry else (512, 8, a.steps or 30)
        rows = [measure(n, shape, seq, batch, steps, warm, device, bf16) for n in ("vanilla", "bias quintic")]
        report(rows, peak, f"trainer check: seq {seq}, batch {batch}, {steps} steps, bf16={bf16}")
        result["trainer"] = rows
        save()
    if "throughput" in modes:
        seq = a.seq or (64 if a.dry else 1024)
        batch = a.batch or (2 if a.dry else next((b for b in (32, 16, 8) if fits(shape, seq, b, device, bf16)), 4))
        steps = a.steps or (2 if a.dry else 20)
        rows = [measure(n, shape, seq, batch, steps, warm, device, bf16) for n in VARIANTS]
        rows.append(measure("vanilla", shape, seq, batch, steps, warm, device, bf16))
        rows[-1]["variant"] = "vanilla (again, drift check)"
        if a.compile:
            rows += [measure(n, shape, seq, batch, steps, 2 * warm, device, bf16, compile_model=True)
                     for n in ("vanilla", "bias quintic")]
        report(rows, peak, f"throughput: seq {seq}, batch {batch}, {steps} steps, bf16={bf16}")
        result["throughput"] = rows
        save()
    if "sweep" in modes:
        seq, batch, steps = (64, 2, 2) if a.dry else (512, 8, 40)
        result["sweep"] = sweep(device, a.dry, seq, batch, steps)
        save()
    print(f"\ngpu_check finished in {time.perf_counter() - t_all:.0f} s on {info['device']}")
    return result


if __name__ == "__main__":
    main()
