"""GPU check: the project's own training step at GPT-2 small's shape, told truthfully in 9 minutes.

Every variant runs in its own process (one variant's compiled code, recompiles or memory cannot
touch the next; inductor's and Triton's on-disk caches are shared, so kernels common to several
variants compile once) as a real ``localist.trainer.Trainer`` on synthetic data: random tokens
of GPT-2's vocabulary and random sentence starts (semantic blocks of 8..64 tokens), bf16
autocast, ``train.compile`` auto (on for CUDA) unless ``--eager``. In the order below, each step
written to ``$OUT`` (gpu_check.json and .md) as soon as it ends, until ``--budget`` is spent:

1. versions (torch, CUDA, transformers, accelerate, driver);
2. structure, bias quintic at 8 x 512: dynamo's frames, graph breaks and graphs after each of
   the first steps (``TORCH_LOGS=recompiles,graph_breaks`` of every variant to compile.log),
   the "flex_attention called without torch.compile" warning an error, each layer's attention
   path; then one steady step under ``torch.cuda.set_sync_debug_mode("warn")``: its host syncs;
3. ``verify``: FlexAttention against the SDPA masks on the same q, k, v (outputs and gradients);
4. timing at 8 x 512: vanilla, bias quintic, the paper variant (a hub-style GPT-2 config saved
   locally: dropout 0.1, model.attn_dropout 0, grad_accum 4), uniform strict, window: first-step
   compile seconds, >= 5 warm and >= 30 timed steps between CUDA events, tokens/s, ratio to
   vanilla, MFU, peak memory, recompiles and graph breaks after step 1;
5. the same at 32 x 1024, while the budget lasts.

    bash benchmarks/gpu_check.sh                      # the lent-GPU command (figures to $OUT)
    python -m benchmarks.gpu_check [--mode structure,verify,trainer,throughput] [--variants ...]
        [--eager] [--budget S] [--out DIR]
    python -m benchmarks.gpu_check --dry [--compile]  # tiny shapes on CPU: checks the script runs

Targets (issue #25): vanilla >= 35% MFU at 32 x 1024; every localist variant >= 0.95 x vanilla at
both shapes; zero recompiles and graph breaks after step 1; zero host syncs per steady step.
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
import traceback
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
VARIANTS = {  # name -> (locality section, grad_accum, hub-style model saved locally)
    "vanilla": ({"peak": 0.0}, 1, False),
    "bias quintic": (QUINTIC, 1, False),
    "paper": (QUINTIC, 4, True),
    "bias uniform strict": ({"schedule": "uniform", "peak": 1.0}, 1, False),
    "bias window": ({**QUINTIC, "partition": "window", "window": 64}, 1, False),
}
STRUCTURE_VARIANT = "bias quintic"
RESULT = "GPU-CHECK-RESULT "
NO_COMPILE_WARNING = ".*flex_attention called without torch.compile.*"


# -- one variant, in its own process -------------------------------------------------------------


def hub_style_model(shape: dict, seq: int, path: str) -> str:
    """A GPT-2 with the hub config's defaults (dropout 0.1 everywhere) at this shape, saved to path
    (random weights: speed does not depend on them, and nothing can be downloaded here)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if not os.path.exists(os.path.join(path, "config.json")):
        config = GPT2Config(vocab_size=shape["vocab"], n_positions=max(1024, seq), n_embd=shape["n_embd"],
                            n_layer=shape["n_layer"], n_head=shape["n_head"])
        GPT2LMHeadModel(config).save_pretrained(path)
    return path


def make_trainer(spec: dict, shape: dict, steps: int, out: str):
    from localist.config_files import build
    from localist.trainer import Trainer

    loc, accum, hub = VARIANTS[spec["variant"]]
    if hub:
        model = {"name": hub_style_model(shape, spec["seq"], spec["hub_dir"])}
    else:
        model = {"name": "tiny", "n_layer": shape["n_layer"], "n_embd": shape["n_embd"], "n_head": shape["n_head"]}
    tree = {"model": model, "data": {"corpus": "pydoc", "seq_len": spec["seq"]},
            "train": {"steps": steps, "batch_size": spec["batch"], "grad_accum": accum, "warmup_steps": 2,
                      "grad_clip": 1.0, "compile": spec["compile"], "log_every": steps, "eval_every": steps},
            "locality": loc}
    data = synthetic_data(shape, spec["seq"], max(64, 4 * spec["batch"] * accum))
    return Trainer(build(tree, "gpu_check"), out, "gpu-check", log=silent, data=data)


def _dynamo() -> dict:
    from torch._dynamo.utils import counters

    return {"frames": int(counters["frames"]["total"]), "graph_breaks": int(sum(counters["graph_break"].values())),
            "graphs": int(counters["stats"]["unique_graphs"])}


def _step(tr) -> torch.Tensor:
    loss = tr.train_step()
    tr.step += 1
    return loss


def _syncs(tr, device) -> dict:
    """Host syncs in one steady step: set_sync_debug_mode("warn") on CUDA (each warning with the
    Python line it came from), the call counter of benchmarks.host_syncs on CPU."""
    if device.type != "cuda":
        if tr.compiled:  # the CPU counter is a torch-function mode: the compiled step would recompile under it
            return {"how": "n/a (compiled on CPU; tests/test_compiled_step.py counts eager steps)", "count": None, "first": []}
        from benchmarks.host_syncs import HostSyncs

        with HostSyncs() as s:
            _step(tr)
        return {"how": "call counter (CPU)", "count": sum(s.seen.values()), "first": [str(dict(s.seen))] if s.seen else []}
    torch.cuda.synchronize()
    seen: list[str] = []
    old = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            where = [f"{f.filename.replace(ROOT + '/', '')}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]
                     if "warnings" not in f.filename][-4:]
            seen.append(f"{str(message)[:120]} at {' <- '.join(reversed(where))}")
        else:
            old(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _step(tr)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = old
    torch.cuda.synchronize()
    return {"how": "set_sync_debug_mode('warn')", "count": len(seen), "first": seen[:5]}


def measure(spec: dict) -> dict:
    """Build the variant's Trainer; the first step (compile), dynamo's counts after each of the first
    steps, optionally the host syncs of one steady step, then `warm` + `steps` timed by CUDA events."""
    shape = DRY if spec["dry"] else GPT2_SMALL
    seq, batch, warm, steps = spec["seq"], spec["batch"], spec["warm"], spec["steps"]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
        tr = make_trainer(spec, shape, 4 + warm + steps, out)
        device = tr.device
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        row = {"variant": spec["variant"], "seq": seq, "batch": batch, "grad_accum": tr.cfg.train.grad_accum,
               "attention_paths": list(tr.plan.paths), "flex_note": tr.plan.flex_note, "compiled": tr.compiled}
        t0 = time.perf_counter()
        float(_step(tr))
        row["first_step_s"] = time.perf_counter() - t0
        row["compile_s"] = tr.compile_s
        after = [{"step": 1, **_dynamo()}]
        for s in (2, 3):
            float(_step(tr))
            after.append({"step": s, **_dynamo()})
        row["dynamo_after_step"] = after
        if spec.get("syncs"):
            row["host_syncs"] = _syncs(tr, device)
        frames1 = after[0]
        for _ in range(warm):
            loss = _step(tr)
        float(loss)
        times = []
        if cuda:
            events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            events[0].record()
            for i in range(steps):
                loss = _step(tr)
                events[i + 1].record()
            final = float(loss)  # waits for the device
            torch.cuda.synchronize()
            times = [a.elapsed_time(b) / 1000 for a, b in zip(events, events[1:])]
        else:
            for _ in range(steps):
                t = time.perf_counter()
                final = float(_step(tr))
                times.append(time.perf_counter() - t)
        now = _dynamo()
        elapsed = sum(times)
        tokens = steps * batch * tr.cfg.train.grad_accum * seq
        tps = tokens / elapsed
        peak = speed.peak_flops(device, spec.get("peak_tflops")) if tr.accel.mixed_precision in ("bf16", "fp16") else None
        row.update({
            "steps": steps, "warm": warm, "tokens_per_s": tps, "step_ms": 1000 * float(np.median(times)),
            "step_ms_p90": 1000 * float(np.percentile(times, 90)), "loss": final,
            "flops_per_token": tr.flops_per_token, "mfu": speed.mfu(tr.flops_per_token, tps, peak),
            "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
            "recompiles": now["frames"] - frames1["frames"], "graph_breaks_after_step1": now["graph_breaks"] - frames1["graph_breaks"],
            "graph_breaks": now["graph_breaks"], "frames": now["frames"], "flex": tr.plan.uses_flex,
            "precision": tr.accel.mixed_precision, "device": str(device)})
        return row


def child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    if spec["dry"]:
        torch.set_num_threads(1)  # a dry run only checks the script; one thread is steadier on a busy CPU
    warnings.filterwarnings("error", message=NO_COMPILE_WARNING)  # an unfused kernel must not pass unseen
    print(RESULT + json.dumps(measure(spec)), flush=True)


def run_variant(spec: dict, timeout: float, log_path: str | None) -> dict:
    """One variant in a fresh Python process; its row, or the error it died with. Its dynamo log
    (recompiles, graph breaks) is appended to log_path."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", json.dumps(spec)]
    env = child_env(TORCH_LOGS="recompiles,graph_breaks")
    head = {k: spec[k] for k in ("variant", "seq", "batch")}
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        _append(log_path, head, stderr)
        return {**head, "error": f"timed out ({timeout:.0f} s)"}
    _append(log_path, head, p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT)]
    if p.returncode or not lines:
        return {**head, "error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}"}
    return json.loads(lines[-1][len(RESULT):])


def _append(path: str | None, head: dict, text: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(f"\n===== {head['variant']} seq {head['seq']} x batch {head['batch']} =====\n{text[-200_000:]}")


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
                with torch.set_grad_enabled(grads), warnings.catch_warnings():
                    warnings.filterwarnings("ignore" if not grads else "error", message=NO_COMPILE_WARNING)
                    if use_flex:
                        o = flex.attention(ctx, lam, q, k, v, 1 / math.sqrt(D), backend="inductor" if grads else None)
                    else:
                        o = _sdpa(q, k, v, ctx.mask(lam, T, device, dtype), 0.0, 1 / math.sqrt(D), False)
                    if grads:
                        (o.float() * probe.float()).sum().backward()
                res[use_flex] = (o.detach().float(), [t.grad.float() for t in (q, k, v)] if grads else [])
        except Exception as e:  # report and go on: the timings still run
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


def _fmt(x, f: str) -> str:
    return "n/a" if x is None else format(x, f)


def table(rows: list[dict], title: str) -> list[str]:
    """Ratios to vanilla, as markdown lines (also printed)."""
    base = next((r for r in rows if r["variant"] == "vanilla" and "error" not in r), None)
    lines = [f"### {title}", "", "| variant | tokens/s | / vanilla | step ms (p90) | MFU | peak GB | compile s | "
             "recompiles | breaks | attention |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | ERROR: {r['error'].strip().splitlines()[-1][:200] if r['error'].strip() else ''} |"
                         + "|" * 8)
            continue
        r["ratio_vs_vanilla"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        from localist.attention import describe_paths

        lines.append(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {_fmt(r['ratio_vs_vanilla'], '.3f')} | "
                     f"{r['step_ms']:.1f} ({r['step_ms_p90']:.1f}) | {_fmt(r['mfu'], '.1%')} | {_fmt(r['peak_mem_gb'], '.2f')} | "
                     f"{_fmt(r['first_step_s'], '.1f')} | {r['recompiles']} | {r['graph_breaks']} | "
                     f"{describe_paths(r['attention_paths'])}{'' if r['flex'] or not r['flex_note'] else ' (' + r['flex_note'][:80] + ')'} |")
    return lines + [""]


def structure_lines(row: dict) -> list[str]:
    if "error" in row:
        return ["### structure", "", f"ERROR: {row['error'][-1500:]}", ""]
    from localist.attention import describe_paths

    lines = ["### structure: " + f"{row['variant']} at {row['seq']} x {row['batch']}", "",
             f"- attention paths: {describe_paths(row['attention_paths'])} ({row['flex_note']})",
             f"- first step {row['first_step_s']:.1f} s (compile {_fmt(row['compile_s'], '.1f')} s)"]
    lines += [f"- after step {a['step']}: dynamo frames {a['frames']}, graphs {a['graphs']}, graph breaks {a['graph_breaks']}"
              for a in row["dynamo_after_step"]]
    s = row.get("host_syncs") or {}
    lines.append(f"- host syncs in one steady step ({s.get('how')}): {s.get('count')}")
    lines += [f"  - {x}" for x in s.get("first", [])]
    lines.append(f"- recompiles after step 1 (over {row['warm'] + row['steps']} more steps): {row['recompiles']}")
    return lines + [""]


def markdown(result: dict, shapes: dict, steps: int) -> str:
    """The whole report so far (rewritten after every step)."""
    info = result["info"]
    md = [f"## gpu_check on {info['device']} (torch {info['torch']}, CUDA {info['cuda']}, transformers "
          f"{info['transformers']}, driver {info.get('driver', 'n/a')}, compile {info['compile']}, bf16 {info['bf16']})", ""]
    if "structure" in result:
        md += structure_lines(result["structure"])
    if "verify" in result:
        md += ["### verify: FlexAttention vs SDPA masks", ""] + [
            f"- {r['case']}: {'ok' if r['ok'] else 'MISMATCH'} " + (r.get("error") or
              f"(fwd max abs diff {r['fwd_max_abs_diff']:.2e}, grad max rel diff {r['grad_max_rel_diff']:.2e})")
            for r in result["verify"]] + [""]
    for mode in ("trainer", "throughput"):
        if result.get(mode):
            seq, batch = shapes[mode]
            md += table(result[mode], f"{mode}: seq {seq} x batch {batch}, {steps} timed steps after warm-up, "
                                      "one process per variant")
    if result["skipped"]:
        md += ["### skipped (budget)", ""] + [f"- {x}" for x in result["skipped"]] + [""]
    md.append(f"wall {result.get('wall_s', 0):.0f} s of a {info['budget_s']:.0f} s budget")
    return "\n".join(md) + "\n"


def versions(device) -> dict:
    import importlib.metadata as md

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "flex_available": flex.available()}
    for pkg in ("transformers", "accelerate", "triton"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["driver"] = f"nvidia-smi failed: {e}"
    else:
        info["device"] = "cpu"
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="structure,verify,trainer,throughput", help="structure,verify,trainer,throughput")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--dry", action="store_true", help="tiny shapes and 2 steps on CPU: checks the script runs")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--compile", dest="compile_", action="store_const", const="true", default="auto",
                   help="train.compile=true (also on CPU); default auto = compiled on CUDA")
    c.add_argument("--eager", dest="compile_", action="store_const", const="false", help="train.compile=false")
    p.add_argument("--batch", type=int, default=None, help="throughput batch (default 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 30; dry 2)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak for MFU (default by name)")
    p.add_argument("--budget", type=float, default=540, help="seconds for the whole check (default 540)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="write gpu_check.json, .md and compile.log here (default $OUT)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child)
        return {}
    t_all = time.perf_counter()
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not a.dry:
        p.error("no GPU here: use --dry for the CPU check of the script")
    modes = [m.strip() for m in a.mode.split(",") if m.strip()]
    names = [n.strip() for n in a.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS] + [m for m in modes if m not in ("structure", "verify", "trainer", "throughput")]
    if unknown:
        p.error(f"unknown variant(s) or mode(s) {unknown}; variants: {list(VARIANTS)}")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    info = {**versions(device), "bf16": bf16, "compile": a.compile_, "shape": DRY if a.dry else GPT2_SMALL,
            "budget_s": a.budget}
    peak = speed.peak_flops(device, a.peak_tflops)
    info["peak_tflops"] = peak / 1e12 if peak else None
    print(json.dumps(info), flush=True)
    result: dict = {"info": info, "skipped": []}
    out = a.out
    if out:
        os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "compile.log") if out else None
    hub_dir = tempfile.mkdtemp(prefix="gpu-check-hub-")

    def save() -> None:  # after every step, so a run cut short still leaves its figures
        result["wall_s"] = time.perf_counter() - t_all
        if out:
            with open(os.path.join(out, "gpu_check.json"), "w") as f:
                json.dump(result, f, indent=1, default=str)
            with open(os.path.join(out, "gpu_check.md"), "w") as f:
                f.write(markdown(result, shapes, steps))

    def left() -> float:
        return a.budget - (time.perf_counter() - t_all)

    steps = a.steps or (2 if a.dry else 30)
    base = {"dry": a.dry, "compile": a.compile_, "warm": 1 if a.dry else 5, "steps": steps,
            "peak_tflops": a.peak_tflops, "hub_dir": hub_dir}
    shapes = {"trainer": (64, 2) if a.dry else (512, 8), "throughput": (64, 2) if a.dry else (1024, a.batch or 32)}
    costs: list[float] = []  # seconds each variant process took: the estimate for the next one

    def variant(spec: dict) -> dict | None:
        need = max(costs, default=30.0) * 1.1
        if left() < need:
            result["skipped"].append(f"{spec['variant']} {spec['seq']}x{spec['batch']}: {left():.0f} s left, ~{need:.0f} s needed")
            print(f"[gpu_check] skipped {result['skipped'][-1]}", flush=True)
            return None
        t = time.perf_counter()
        row = run_variant(spec, left(), log_path)
        costs.append(time.perf_counter() - t)
        print(f"[gpu_check] {spec['variant']} {spec['seq']}x{spec['batch']}: "
              + (f"{row['tokens_per_s']:,.0f} tok/s" if "error" not in row else "ERROR") + f" ({costs[-1]:.0f} s)", flush=True)
        return row

    save()
    timed: dict[str, list[dict]] = {"trainer": [], "throughput": []}
    if "structure" in modes:
        seq, batch = shapes["trainer"]
        row = variant({**base, "variant": STRUCTURE_VARIANT, "seq": seq, "batch": batch, "syncs": True})
        if row is not None:
            result["structure"] = row
            if "error" not in row and "trainer" in modes and STRUCTURE_VARIANT in names:
                timed["trainer"].append(row)  # the same process timed it too
        save()
    if "verify" in modes:
        result["verify"] = verify(device, a.dry, bf16)
        save()
    for mode in ("trainer", "throughput"):
        if mode not in modes:
            continue
        seq, batch = shapes[mode]
        done = {r["variant"] for r in timed[mode]}
        for name in names:
            if name not in done:
                row = variant({**base, "variant": name, "seq": seq, "batch": batch})
                if row is not None:
                    timed[mode].append(row)
            result[mode] = sorted(timed[mode], key=lambda r: list(VARIANTS).index(r["variant"]))
            save()
    print(markdown(result, shapes, steps), flush=True)
    print(f"\ngpu_check finished in {time.perf_counter() - t_all:.0f} s on {info['device']}", flush=True)
    save()
    return result


if __name__ == "__main__":
    main()
