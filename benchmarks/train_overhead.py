"""What Ray Train costs a trial on one GPU: the same trial in a 1-worker Ray Train run against the
plain trial, on the same GPU, each in its own process (target, issue #26: under 3%).

A 1-worker sweep trial never goes through Ray Train (train.workers: 1 is the plain trial); this
measures what the Train path adds to every multi-worker trial, one worker's share: Train's
process group and Accelerate's DDP wrapper around the model (with its logits loss, where the plain
trial takes the chunked tied-head loss), Train's reports at every log step, and a checkpoint
reported and committed through Train mid-trial (the plain variant saves the same checkpoint to a
local folder). Both run ``localist.trainer.Trainer`` at GPT-2 small's shape on the same synthetic
tokens (``benchmarks.common.synthetic_data``: no corpus, no tokenizer), bf16 autocast and the
compiled step on CUDA (``train.compile: auto``), bias quintic locality, 8 x 512 x grad_accum 4.

Figures per variant: the training loop's tokens/s after its first logged window (Trainer's own
clock: evaluation and reports excluded), tokens/s over the whole fit (everything included), the
first step's compile seconds, and for Train the seconds from TorchTrainer.fit() to the first step
(worker group and process group start). Written to ``$OUT`` (default ./train_overhead_out):
train_overhead.json and .md, after each variant.

    python -m benchmarks.train_overhead [--steps 300] [--out DIR]   # on a GPU machine with the project and Ray
    python -m benchmarks.train_overhead --dry                        # tiny shapes on CPU: checks the script runs

It needs the project's dependencies, Ray included (a node of the project image, cluster/Dockerfile,
or `make install`); about 3 minutes on one GPU. Not run on a GPU yet: the --dry form ran on a
2-core CPU (its figures mean nothing beyond "both variants ran").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, child_env, silent, synthetic_data  # noqa: E402

SHAPES = {"gpu": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab": 50257, "seq": 512, "batch": 8, "accum": 4},
          "dry": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab": 512, "seq": 64, "batch": 4, "accum": 2}}
VARIANTS = ("plain", "train")
TARGET = 0.97  # Train's loop tokens/s at least 97% of the plain trial's


def _config(shape: dict, steps: int):
    from localist.config_files import build

    log = max(steps // 12, 1)
    return build({"model": {"name": "tiny", "n_layer": shape["n_layer"], "n_embd": shape["n_embd"],
                            "n_head": shape["n_head"]},
                  "data": {"seq_len": shape["seq"], "eval_sequences": 2},
                  "train": {"steps": steps, "batch_size": shape["batch"], "grad_accum": shape["accum"], "lr": 3e-4,
                            "warmup_steps": 2, "log_every": log, "eval_every": steps, "checkpoint_every": steps // 2},
                  "locality": {"schedule": "polynomial", "power": 5, "peak": 1.0}}, "benchmark")


def _fit(shape: dict, steps: int, out: str, report, times: dict) -> dict:
    """One trial: the Trainer on synthetic tokens, reports and one checkpoint through `report`."""
    from localist.trainer import Trainer

    trainer = Trainer(_config(shape, steps), out, "bench", log=silent, data=synthetic_data(shape, shape["seq"], 512))

    def on_checkpoint(tr) -> None:
        with tempfile.TemporaryDirectory() as d:
            tr.save_checkpoint(d)
            report({"step": tr.step}, d)

    times["first_step"] = time.time()
    t0 = time.perf_counter()
    trainer.fit(on_checkpoint=on_checkpoint, on_metrics=lambda m: report({"step": trainer.step, **m}))
    fit_s = time.perf_counter() - t0
    rows = [r for r in trainer.step_rows if r["split"] == "train"]
    warm = (rows[-1]["tokens_seen"] - rows[0]["tokens_seen"]) / (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"])
    figures = trainer.speed_figures()
    return {"warm_tokens_per_s": warm, "fit_tokens_per_s": trainer.tokens_seen / fit_s, "fit_s": fit_s,
            "compile_s": figures["compile_s"], "compiled": figures["compiled"], "mfu": figures["mfu"],
            "device": trainer._device_name(), "distributed": str(trainer.accel.distributed_type)}


def _plain(shape: dict, steps: int, out: str) -> dict:
    return _fit(shape, steps, out, lambda *_: None, {})


def _train_worker(config: dict) -> None:
    from orchestrator.sweep.train_workers import send

    times: dict = {}
    res = _fit(config["shape"], config["steps"], config["out"], send, times)
    res["first_step_time"] = times["first_step"]
    with open(config["result"], "w") as f:
        json.dump(res, f)


def _train(shape: dict, steps: int, out: str, gpu: bool) -> dict:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from orchestrator.sweep import ray_start, train_workers

    os.environ.setdefault(train_workers.PRINT_PATCH, "0")
    ray_start.loopback_only(ray)
    for k, v in ray_start.LOCAL_AUTH.items():
        os.environ.setdefault(k, v)
    ray.init(include_dashboard=False, num_cpus=4, num_gpus=1 if gpu else 0, log_to_driver=False)
    result = os.path.join(out, "train_result.json")
    t0 = time.time()
    TorchTrainer(_train_worker,
                 train_loop_config={"shape": shape, "steps": steps, "out": os.path.join(out, "trial"),
                                    "result": result},
                 scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=gpu,
                                                        resources_per_worker={"CPU": 4, **({"GPU": 1} if gpu else {})}),
                 run_config=ray.train.RunConfig(name="bench", storage_path=os.path.join(out, "storage"))).fit()
    wall = time.time() - t0
    ray.shutdown()
    with open(result) as f:
        res = json.load(f)
    res["train_setup_s"] = res.pop("first_step_time") - t0  # TorchTrainer.fit() to the first step
    res["train_fit_wall_s"] = wall
    return res


def _markdown(report: dict) -> str:
    lines = [f"# Ray Train overhead on one GPU ({report['shape_name']}: {report['shape']})", "",
             "| variant | loop tokens/s (warm) | fit tokens/s (all included) | compile s | setup s | device | distributed |",
             "|---|---|---|---|---|---|---|"]
    for name in VARIANTS:
        r = report["variants"].get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:200]} | | | | | |")
            continue
        setup = f"{r['train_setup_s']:.1f}" if "train_setup_s" in r else ""
        compile_s = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else ""
        lines.append(f"| {name} | {r['warm_tokens_per_s']:,.0f} | {r['fit_tokens_per_s']:,.0f} | {compile_s} | "
                     f"{setup} | {r['device']} | {r['distributed']} |")
    if "ratio_warm" in report:
        lines += ["", f"train / plain: loop {report['ratio_warm']:.3f}, whole fit {report['ratio_fit']:.3f} "
                      f"(target: loop >= {TARGET}; {'met' if report['ratio_warm'] >= TARGET else 'NOT met'})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default=os.environ.get("OUT", "train_overhead_out"))
    p.add_argument("--dry", action="store_true", help="tiny shapes on CPU: checks the script runs")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in this process
    a = p.parse_args(argv)
    shape_name = "dry" if a.dry else "gpu"
    shape, steps = SHAPES[shape_name], (24 if a.dry else a.steps)
    os.makedirs(a.out, exist_ok=True)
    if a.variant:
        folder = tempfile.mkdtemp(prefix=f"{a.variant}-", dir=a.out)
        res = _plain(shape, steps, folder) if a.variant == "plain" else _train(shape, steps, folder, not a.dry)
        print(json.dumps(res))
        return res
    import torch

    if not a.dry and not torch.cuda.is_available():
        sys.exit("train_overhead: no CUDA GPU here (use --dry on a CPU)")
    report = {"shape_name": shape_name, "shape": shape, "steps": steps, "variants": {}}
    for name in VARIANTS:
        cmd = [sys.executable, "-m", "benchmarks.train_overhead", "--variant", name, "--out", a.out,
               "--steps", str(steps)] + (["--dry"] if a.dry else [])
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
        try:
            report["variants"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            report["variants"][name] = {"error": (proc.stderr or proc.stdout)[-2000:]}
        v = report["variants"]
        if all(n in v and "error" not in v[n] for n in VARIANTS):
            report["ratio_warm"] = v["train"]["warm_tokens_per_s"] / v["plain"]["warm_tokens_per_s"]
            report["ratio_fit"] = v["train"]["fit_tokens_per_s"] / v["plain"]["fit_tokens_per_s"]
        with open(os.path.join(a.out, "train_overhead.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(a.out, "train_overhead.md"), "w") as f:
            f.write(_markdown(report))
        print(_markdown(report), flush=True)
    return report


if __name__ == "__main__":
    main()
