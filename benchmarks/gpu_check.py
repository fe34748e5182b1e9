"""GPU check: the project's own ``Trainer.train_step`` at GPT-2 small shape, localist vs vanilla.

Every variant runs in its own process (so one variant's compiled kernels, recompiles or memory
cannot slow the next), as a real ``localist.trainer.Trainer`` on synthetic data: random tokens
of GPT-2's vocabulary (50257) and random sentence starts (one every ~20 tokens, semantic blocks
of 8..64 tokens, as the default partitioner makes them), GPT-2 small's shape (12 x 768, 12
heads), dropout 0, bf16 autocast where the GPU has it, ``train.compile`` auto (on for CUDA) or
as ``--compile`` / ``--eager`` say. The timed step is ``Trainer.train_step`` (pinned batch
ahead, forward, chunked cross-entropy, backward, clipping, fused AdamW, scheduler), the loss
read once after the timed steps. Modes (default: all but sweep):

- ``verify``: FlexAttention against the SDPA-mask path on the same queries, keys and values
  (outputs, and gradients on CUDA), soft and hard, semantic blocks and window;
- ``trainer``: seq 512 x batch 8 (the paper's trial shape): vanilla, bias quintic, uniform
  strict and window: tokens/s, ratio to vanilla, MFU, peak memory, recompiles after warm-up;
- ``throughput``: the same variants at seq 1024 x batch 32 (``--batch`` to change);
- ``sweep``: 3 bias-quintic trials sharing one GPU at once vs one after another.

    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check [--mode verify,trainer,throughput]
        [--variants vanilla,bias quintic] [--compile | --eager] [--batch N] [--out DIR]
    python -m benchmarks.gpu_check --dry [--compile]   # tiny shapes on CPU: checks the script runs
    bash benchmarks/gpu_check.sh                        # the lent-GPU command (figures to $OUT)

Targets (issue #10): vanilla >= 35% MFU at seq 1024; every localist variant >= 0.95 x vanilla
at both shapes; zero recompiles after warm-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import ROOT, child_env, silent, synthetic_data  # noqa: E402
from localist import flex, speed  # noqa: E402

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab": 50257}
DRY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab": 256}
QUINTIC = {"schedule": "polynomial", "power": 5, "peak": 1.0}
VARIANTS = {  # name -> locality section of the trial config
    "vanilla": {"peak": 0.0},
    "bias quintic": QUINTIC,
    "bias uniform strict": {"schedule": "uniform", "peak": 1.0},
    "bias window": {**QUINTIC, "partition": "window", "window": 32},
}
RESULT = "GPU-CHECK-RESULT "


# -- one variant, in its own process -------------------------------------------------------------


def make_trainer(variant: str, shape: dict, seq: int, batch: int, steps: int, compile_: str, out: str):
    from localist.config_files import build
    from localist.trainer import Trainer

    tree = {"model": {"name": "tiny", "n_layer": shape["n_layer"], "n_embd": shape["n_embd"],
                      "n_head": shape["n_head"], "dropout": 0.0},
            "data": {"corpus": "pydoc", "seq_len": seq},
            "train": {"steps": steps, "batch_size": batch, "warmup_steps": 2, "grad_clip": 1.0, "compile": compile_,
                      "log_every": steps, "eval_every": steps},
            "locality": VARIANTS[variant]}
    return Trainer(build(tree, "gpu_check"), out, "gpu-check", log=silent,
                   data=synthetic_data(shape, seq, max(64, 4 * batch)))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(spec: dict) -> dict:
    """Build the variant's Trainer, run `warm` steps (compiling), time `steps` more."""
    shape = DRY if spec["dry"] else GPT2_SMALL
    seq, batch, warm, steps = spec["seq"], spec["batch"], spec["warm"], spec["steps"]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
        tr = make_trainer(spec["variant"], shape, seq, batch, warm + steps, spec["compile"], out)
        device = tr.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(warm):
            loss = tr.train_step()
            tr.step += 1
        float(loss)  # waits for the device
        t1 = time.perf_counter()
        frames = speed.dynamo_frames()
        for _ in range(steps):
            loss = tr.train_step()
            tr.step += 1
        final = float(loss)
        sync(device)
        elapsed = time.perf_counter() - t1
        tps = steps * batch * seq / elapsed
        peak = speed.peak_flops(device, spec.get("peak_tflops"))
        return {"variant": spec["variant"], "seq": seq, "batch": batch, "steps": steps, "tokens_per_s": tps,
                "step_ms": 1000 * elapsed / steps, "warmup_s": t1 - t0, "loss": final,
                "flops_per_token": tr.flops_per_token, "mfu": speed.mfu(tr.flops_per_token, tps, peak),
                "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                "compiled": tr.compiled, "recompiles": speed.dynamo_frames() - frames,
                "flex": bool(tr._flex and flex.enabled()), "flex_failed": flex.failure(),
                "precision": tr.accel.mixed_precision, "device": str(device)}


def child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    if spec["dry"]:
        torch.set_num_threads(1)  # a dry run only checks the script; one thread is steadier on a busy CPU
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    print(RESULT + json.dumps(measure(spec)), flush=True)


def run_variant(spec: dict, timeout: float) -> dict:
    """One variant in a fresh Python process; its result, or the error it died with."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": spec["variant"], "seq": spec["seq"], "batch": spec["batch"], "error": f"timed out ({timeout:.0f} s)"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT)]
    if p.returncode or not lines:
        return {"variant": spec["variant"], "seq": spec["seq"], "batch": spec["batch"],
                "error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}"}
    return json.loads(lines[-1][len(RESULT):])


# -- verify: FlexAttention against the SDPA masks ------------------------------------------------


def verify(device, dry: bool, bf16: bool) -> list[dict]:
    """FlexAttention against the SDPA-mask path on the same q, k, v: outputs (and gradients on CUDA).

    On CPU FlexAttention has no backward, so only the eager forward is compared, in fp32."""
    from localist.attention import LocalityContext, _sdpa

    B, H, T, D = (2, 2, 64, 16) if dry else (8, 12, 512, 64)
    dtype = torch.bfloat16 if bf16 else torch.float32
    grads = device.type == "cuda"
    g = torch.Generator().manual_seed(5)
    qkv = [torch.randn(B, H, T, D, generator=g).to(device, dtype) for _ in range(3)]
    probe = torch.randn(B, T, H, D, generator=g).to(device, dtype)
    starts = torch.rand(B, T, generator=g) < 1 / 20
    blocks = starts.long().cumsum(-1).to(device)
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
                        o = flex.attention(ctx, lam, q, k, v, 1 / math.sqrt(D), backend="inductor" if grads else None)
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


# -- the whole check -------------------------------------------------------------------------------


def report(rows: list[dict], title: str) -> list[str]:
    """Ratios to vanilla; prints the table and returns it as markdown lines."""
    base = next((r for r in rows if r["variant"] == "vanilla" and "error" not in r), None)
    lines = [f"### {title}", "", "| variant | tokens/s | / vanilla | step ms | MFU | peak GB | recompiles | flex |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | ERROR: {r['error'].splitlines()[-1][:200] if r['error'] else ''} |||||||")
            continue
        r["ratio_vs_vanilla"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        fmt = lambda x, f: "n/a" if x is None else format(x, f)  # noqa: E731
        lines.append(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {fmt(r['ratio_vs_vanilla'], '.3f')} | "
                     f"{r['step_ms']:.1f} | {fmt(r['mfu'], '.1%')} | {fmt(r['peak_mem_gb'], '.2f')} | "
                     f"{r['recompiles']} | {'yes' if r['flex'] else 'no'}{' (FAILED: SDPA)' if r['flex_failed'] else ''} |")
    print("\n" + "\n".join(lines), flush=True)
    return lines + [""]


def sweep(base: dict, timeout: float) -> dict:
    """3 bias-quintic trials one after another, then 3 at once on the same GPU (Ray Tune's
    fractional GPUs only co-locate processes)."""
    spec = {**base, "variant": "bias quintic"}
    t0 = time.perf_counter()
    alone = [run_variant(spec, timeout) for _ in range(3)]
    sequential = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    shared = []
    for p in procs:
        so, se = p.communicate(timeout=timeout)
        lines = [ln for ln in so.splitlines() if ln.startswith(RESULT)]
        if p.returncode or not lines:
            raise RuntimeError(f"sweep trial failed ({p.returncode}):\n{se[-2000:]}")
        shared.append(json.loads(lines[-1][len(RESULT):]))
    concurrent = time.perf_counter() - t0
    res = {"sequential_s": sequential, "concurrent_s": concurrent, "speedup": sequential / concurrent,
           "trial_tokens_per_s_alone": float(np.mean([t["tokens_per_s"] for t in alone if "error" not in t])),
           "trial_tokens_per_s_shared": float(np.mean([t["tokens_per_s"] for t in shared]))}
    print(f"\nsweep: 3 trials one after another {sequential:.1f} s, sharing one GPU {concurrent:.1f} s "
          f"({res['speedup']:.2f}x); tokens/s per trial alone {res['trial_tokens_per_s_alone']:,.0f}, "
          f"shared {res['trial_tokens_per_s_shared']:,.0f}", flush=True)
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="verify,trainer,throughput", help="verify,trainer,throughput,sweep")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--dry", action="store_true", help="tiny shapes and 2 steps on CPU: checks the script runs")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--compile", dest="compile_", action="store_const", const="true", default="auto",
                   help="train.compile=true (also on CPU); default auto = compiled on CUDA")
    c.add_argument("--eager", dest="compile_", action="store_const", const="false", help="train.compile=false")
    p.add_argument("--batch", type=int, default=None, help="throughput batch (default 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 20; dry 2)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak for MFU (default by name)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per variant process")
    p.add_argument("--out", default=os.environ.get("OUT"), help="write gpu_check.json and .md here (default $OUT)")
    p.add_argument("--json", default=None, help="also write every figure to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child)
        return {}
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not a.dry:
        p.error("no GPU here: use --dry for the CPU check of the script")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    peak = speed.peak_flops(device, a.peak_tflops)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "bf16": bf16, "flex_available": flex.available(), "compile": a.compile_,
            "peak_tflops": peak / 1e12 if peak else None, "shape": DRY if a.dry else GPT2_SMALL}
    print(json.dumps(info), flush=True)
    result: dict = {"info": info}
    md = [f"## gpu_check on {info['device']} (torch {info['torch']}, compile {a.compile_}, bf16 {bf16})", ""]
    t_all = time.perf_counter()

    def save() -> None:  # after every mode, so a run cut short still leaves its figures
        result["wall_s"] = time.perf_counter() - t_all
        for path, text in ((a.json, None), (a.out and os.path.join(a.out, "gpu_check.json"), None),
                           (a.out and os.path.join(a.out, "gpu_check.md"), "\n".join(md))):
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text if text is not None else json.dumps(result, indent=1, default=str))

    modes = [m.strip() for m in a.mode.split(",") if m.strip()]
    names = [n.strip() for n in a.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    steps = a.steps or (2 if a.dry else 20)
    spec = {"dry": a.dry, "compile": a.compile_, "warm": 1 if a.dry else 5, "steps": steps,
            "peak_tflops": a.peak_tflops}
    if "verify" in modes:
        result["verify"] = verify(device, a.dry, bf16)
        md += ["### verify: FlexAttention vs SDPA masks", ""] + [
            f"- {r['case']}: {'ok' if r['ok'] else 'MISMATCH'} {r.get('error', '')}" for r in result["verify"]] + [""]
        save()
    for mode, (seq, batch) in (("trainer", (64, 2) if a.dry else (512, 8)),
                               ("throughput", (64, 2) if a.dry else (1024, a.batch or 32))):
        if mode in modes:
            rows = []
            for name in names:
                rows.append(run_variant({**spec, "variant": name, "seq": seq, "batch": batch}, a.timeout))
                print(f"[gpu_check] {mode} {name}: " + (f"{rows[-1]['tokens_per_s']:,.0f} tok/s"
                      if "error" not in rows[-1] else "ERROR"), flush=True)
            md += report(rows, f"{mode}: seq {seq} x batch {batch}, {steps} timed steps, one process per variant")
            result[mode] = rows
            save()
    if "sweep" in modes:
        result["sweep"] = sweep({**spec, "seq": 64 if a.dry else 512, "batch": 2 if a.dry else 8}, a.timeout)
        md += ["### sweep", "", json.dumps(result["sweep"]), ""]
        save()
    print(f"\ngpu_check finished in {time.perf_counter() - t_all:.0f} s on {info['device']}", flush=True)
    save()
    return result


if __name__ == "__main__":
    main()
