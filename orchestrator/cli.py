"""`localist` - the command line. User errors print one clear message and exit with code 2."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from localist.config import ConfigError
from localist.errors import UserError


def _warn(messages: list[str]) -> None:
    for m in messages:
        print(f"warning: {m}", file=sys.stderr)


def _cmd_train(a) -> int:
    from localist import config, config_files, io, trial_files
    from localist.trainer import run_trial

    cfg = config_files.load(a.config, a.set)  # also refuses a corpus file that does not exist
    if trial_files.has_result(a.out):  # written last: the folder holds a finished result
        if not a.force:
            raise ConfigError(f"--out {a.out}: already holds a finished result ({trial_files.TRIAL}); "
                              "pass --force to replace it, or choose another folder")
        for old in (trial_files.TRIAL, trial_files.CHECKPOINT):  # start afresh, never from a stale checkpoint
            io.delete(io.join(a.out, old))
    _warn(config.warnings_for(cfg))
    if a.save_model:
        cfg.train.save_model = True
    result = run_trial(cfg, a.out, trial_id=a.trial_id)
    return 0 if result.status == "completed" else 1


def _quiet_loading() -> None:
    """No 'Loading weights' progress bar from transformers for a model of a few MB."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _cmd_inspect(a) -> int:
    from localist.inspection import inspect
    from localist.saved import SavedModel

    if (a.text is None) == (a.file is None):
        raise ConfigError("inspect: give the text either as an argument or with --file F (one of the two)")
    if a.file is not None:
        try:
            with open(a.file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"inspect: --file {a.file}: {e.strerror}") from None
    else:
        text = a.text
    _quiet_loading()
    inspect(SavedModel.load(a.model), text, a.out, compare=a.no_locality)
    return 0


def _cmd_generate(a) -> int:
    from localist.generation import both
    from localist.model_card import schedule_text
    from localist.saved import SavedModel

    _quiet_loading()
    saved = SavedModel.load(a.model)
    for g in both(saved, a.prompt, plain=not a.no_plain, max_new_tokens=a.max_new_tokens,
                  temperature=a.temperature, top_k=a.top_k, seed=a.seed):
        what = f"with its locality ({schedule_text(saved.config)})" if g.locality else "plain causal attention"
        print(f"[generate] {what}:\n{a.prompt}{g.text}\n")
    return 0


def _load_sweep(a):
    from localist.config_files import apply_overrides
    from orchestrator import spec as sweep_spec

    overrides = {}
    if a.storage:
        overrides["storage"] = a.storage
    if a.set:
        overrides["base"] = apply_overrides({}, a.set, source=f"{a.file}: --set")
    return sweep_spec.load(a.file, overrides)


def _cmd_sweep_run(a) -> int:
    from orchestrator.sweep import driver, dryrun
    from orchestrator.spec import check_files, expand

    from localist.config import warnings_for

    sp = _load_sweep(a)
    trials = expand(sp, a.file)
    check_files(trials, a.file)  # before the dry run too: a missing corpus is refused before anything
    warned: dict[str, list[str]] = {}  # one line per distinct warning, naming the trials it concerns
    for t in trials:
        for w in warnings_for(t.config):
            warned.setdefault(w, []).append(t.trial_id)
    _warn([f"{w} ({ids[0]}{f' and {len(ids) - 1} more' if len(ids) > 1 else ''})" for w, ids in warned.items()])
    if a.dry_run:
        print(dryrun.render(sp, trials, tokens_per_s=a.tokens_per_s, slots=a.slots))
        return 0
    return driver.run(sp, a.file, address=a.address, aggregate=not a.no_aggregate, verbose=a.verbose,
                      trial_lines=a.trial_lines, grace_s=a.grace)


def _cmd_sweep_resume(a) -> int:
    from orchestrator.sweep import driver

    return driver.resume(a.path.rstrip("/"), address=a.address, aggregate=not a.no_aggregate, verbose=a.verbose,
                         trial_lines=a.trial_lines, grace_s=a.grace)


def _cmd_sweep_stop(a) -> int:
    from orchestrator.sweep import preempt

    print(preempt.stop(a.path.rstrip("/")))
    return 0


def _cmd_sweep_status(a) -> int:
    from orchestrator.spec import load_saved
    from orchestrator.sweep import status

    path = a.path.rstrip("/")
    sp = load_saved(path)
    rows = status.run_states(path, status.all_trials(sp, path))
    print(status.summary_line(rows, status.slots(path, sp, len(rows))))
    print(status.driver_line(path))
    print(status.table(rows))
    return 0


def _cmd_sweep_watch(a) -> int:
    from orchestrator.sweep import watch

    return watch.watch(a.path.rstrip("/"), every=a.every, once=a.once)


def _cmd_sweep_collect(a) -> int:
    from orchestrator.spec import load_saved
    from orchestrator.sweep import driver
    from orchestrator.sweep.search_plan import trials_of

    sp = load_saved(a.path)
    return driver.finish(sp, trials_of(sp, a.path, a.path), a.path.rstrip("/"), print,
                         aggregate=not a.no_aggregate)


def _cmd_aggregate(a) -> int:
    from orchestrator.sweep import status
    from orchestrator.analysis.aggregate import aggregate

    path = a.path.rstrip("/")
    partial = status.collect_unfinished(path)
    aggregate(path, baseline=a.baseline, report=not a.no_report, partial=partial)
    return 0


def _cmd_submit(a) -> int:
    from orchestrator import submit

    return submit.submit(a.file, address=a.address, storage=a.storage, follow=a.follow, working_dir=a.working_dir,
                         forward_aws=not a.no_aws_env, extra_env=a.env)


def _cmd_jobs(a) -> int:
    from orchestrator import submit

    return submit.jobs(a.jobs, getattr(a, "job_id", None), address=a.address, follow=getattr(a, "follow", False))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"localist {version('localist')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "localist (not installed)"


def _examples(*lines: str) -> dict:
    """Help that ends with examples, laid out as written."""
    return {"epilog": "examples:\n" + "\n".join(f"  {x}" for x in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


TRIAL_LINES_HELP = ("print each trial's progress lines even in a sweep of more than 64 runs (default: there "
                    "only the sweep's status line every 20 s; every line is in <sweep>/logs/)")
SWEEP_PATH = "the sweep's folder, <storage>/<sweep name> (e.g. results/quick or s3://bucket/sweeps/paper)"
GRACE = ("on SIGTERM, SIGUSR1 or `sweep stop`: at most this long for every running trial to save a checkpoint "
         "at its next step before the driver saves Tune's state and exits (default %(default)g)")
ADDRESS = "the head's Jobs API (default $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)"


def parser() -> argparse.ArgumentParser:
    from orchestrator.sweep.preempt import GRACE_S

    p = argparse.ArgumentParser(
        prog="localist", description="Progressive-localisation sweeps of localist GPT-2 on Ray.",
        **_examples("localist sweep run sweeps/quick.yaml          # the default CPU sweep (about 5 min)",
                    "localist train --out runs/one                 # one tiny trial, no Ray",
                    "localist COMMAND --help                       # options and examples of a command"))
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these (localist COMMAND --help shows its options):")

    t = sub.add_parser("train", help="train one localist trial (no Ray)", description=(
        "Train one trial and write its Parquet files to --out. An --out folder holding an unfinished "
        "run (a checkpoint from train.checkpoint_every) is resumed; one holding a finished result is "
        "refused unless --force."),
        **_examples("localist train --out runs/tiny",
                    "localist train my.yaml --set locality.peak=0.5 --set train.steps=400 --out runs/p05"))
    t.add_argument("config", nargs="?", help="trial config YAML (default: the built-in tiny trial)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted key, e.g. locality.peak=0.5 (repeatable)")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder or URI for the Parquet files")
    t.add_argument("--force", action="store_true", help="replace a finished result already in --out")
    t.add_argument("--trial-id", default="trial", help="the trial_id column of the results (default: trial)")
    t.add_argument("--save-model", action="store_true",
                   help="also write the final model and tokenizer to OUT/model (load: localist.model.load_localist)")
    t.set_defaults(func=_cmd_train)

    MODEL = "a saved model's folder (train.save_model: <sweep>/trials/<run_id>/model, or OUT/model)"
    ins = sub.add_parser("inspect", help="a saved model's attention, blocks and per-token loss on your text (HTML, PNG)",
                         description=(
        "Run a saved model on a text with the locality it was trained under (blocks found in the text by its "
        "partitioner) and write to --out an HTML page (the text with its block boundaries and per-token loss, "
        "per-layer lambda, in-block attention mass and entropy), a PNG of every layer's head-mean attention with "
        "the block boundaries drawn, and the numbers as JSON. --no-locality adds the same model without locality."),
        **_examples('localist inspect results/quick/trials/peak-1__quintic__s1/model "And God said. Let there be light." --out look',
                    "localist inspect runs/one/model --file chapter.txt --out look --no-locality"))
    ins.add_argument("model", help=MODEL)
    ins.add_argument("text", nargs="?", help="the text (or --file)")
    ins.add_argument("--file", metavar="F", help="read the text from this file")
    ins.add_argument("--out", required=True, metavar="DIR", help="folder for the HTML page, the attention figures and the JSON")
    ins.add_argument("--no-locality", action="store_true",
                     help="compare with the unconstrained model (every lambda 0, same weights)")
    ins.set_defaults(func=_cmd_inspect)
    g = sub.add_parser("generate", help="text from a saved model with its trained locality, beside plain generation",
                       description=(
        "Continue a prompt with the locality the model was trained under (blocks recomputed as the text grows; "
        "the partition is causal, so they only extend), then with plain causal attention. Greedy unless "
        "--temperature is given."),
        **_examples('localist generate results/quick/trials/peak-1__quintic__s1/model --prompt "In the beginning"',
                    'localist generate runs/one/model --prompt "And" --temperature 0.8 --top-k 40 --seed 3'))
    g.add_argument("model", help=MODEL)
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument("--max-new-tokens", type=int, default=40, metavar="N", help="tokens to add (default 40)")
    g.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature (default 0: greedy)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K likeliest tokens (0: all)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--no-plain", action="store_true", help="only the generation with locality")
    g.set_defaults(func=_cmd_generate)

    s = sub.add_parser("sweep", help="run, resume, inspect and collect sweeps",
                       **_examples("localist sweep run sweeps/quick.yaml", "localist sweep status results/quick"))
    s = s.add_subparsers(dest="sweep", required=True, metavar="ACTION", help="one of these:")
    r = s.add_parser("run", help="run a sweep file (continues it if its storage already holds it)",
                     **_examples("localist sweep run sweeps/quick.yaml --dry-run",
                                 "localist sweep run sweeps/paper.yaml --address auto --storage s3://bucket/sweeps"))
    r.add_argument("file", help="sweep file (YAML), e.g. sweeps/quick.yaml")
    r.add_argument("--dry-run", action="store_true", help="print the trial table and compute, start nothing")
    r.add_argument("--tokens-per-s", type=float, metavar="N",
                   help="with --dry-run: one trial's training throughput (one worker's, for trials of "
                        "several workers), for GPU-hours and wall time")
    r.add_argument("--slots", type=int, metavar="N", help="with --dry-run: trials at a time on the cluster")
    r.add_argument("--address", help="attach to a running Ray cluster (default: start Ray locally)")
    r.add_argument("--storage", help="override the sweep's storage (path or URI such as s3://bucket/sweeps)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every trial, e.g. train.steps=50 (repeatable)")
    r.add_argument("--no-aggregate", action="store_true", help="skip statistics and report at the end")
    r.add_argument("--verbose", action="store_true",
                   help="print Ray's, Tune's and Accelerate's messages too (default: only in <sweep>/logs/)")
    r.add_argument("--trial-lines", action="store_true", default=None, help=TRIAL_LINES_HELP)
    r.add_argument("--grace", type=float, default=GRACE_S, metavar="SECONDS", help=GRACE)
    r.set_defaults(func=_cmd_sweep_run)
    rs = s.add_parser("resume", help="finish an interrupted sweep (finished trials are kept)",
                      **_examples("localist sweep resume results/quick",
                                  "localist sweep resume s3://bucket/sweeps/paper --address auto"))
    rs.add_argument("path", help=SWEEP_PATH)
    rs.add_argument("--address", help="attach to a running Ray cluster (default: start Ray locally)")
    rs.add_argument("--no-aggregate", action="store_true", help="skip statistics and report at the end")
    rs.add_argument("--verbose", action="store_true",
                    help="print Ray's, Tune's and Accelerate's messages too (default: only in <sweep>/logs/)")
    rs.add_argument("--trial-lines", action="store_true", default=None, help=TRIAL_LINES_HELP)
    rs.add_argument("--grace", type=float, default=GRACE_S, metavar="SECONDS", help=GRACE)
    rs.set_defaults(func=_cmd_sweep_resume)
    sp = s.add_parser("stop", help="stop a running sweep's driver without losing a step (from any shell)",
                      description=(
        "Ask the driver running this sweep (on any machine that shares its storage) to stop: every running "
        "trial saves a checkpoint at its next step, then Tune's state is saved and the driver exits with the "
        "command that continues the sweep (within its --grace). The same as SIGTERM or SIGUSR1 to the driver."),
        **_examples("localist sweep stop results/quick", "localist sweep stop s3://bucket/sweeps/paper"))
    sp.add_argument("path", help=SWEEP_PATH)
    sp.set_defaults(func=_cmd_sweep_stop)
    st = s.add_parser("status", help="per-run state of a sweep, during or after a run",
                      **_examples("localist sweep status results/quick"))
    st.add_argument("path", help=SWEEP_PATH)
    st.set_defaults(func=_cmd_sweep_status)
    w = s.add_parser("watch", help="live table of a sweep's runs (step, loss, tokens/s, ETA) until it ends or Ctrl-C",
                     **_examples("localist sweep watch results/quick",
                                 "localist sweep watch results/quick --every 10"))
    w.add_argument("path", help=SWEEP_PATH)
    w.add_argument("--every", type=float, default=2.0, metavar="SECONDS", help="refresh interval (default 2)")
    w.add_argument("--once", action="store_true", help="print one table and exit")
    w.set_defaults(func=_cmd_sweep_watch)
    c = s.add_parser("collect", help="(re)write the consolidated results/*.parquet and the summary",
                     **_examples("localist sweep collect results/quick",
                                 "localist sweep collect results/quick --no-aggregate"))
    c.add_argument("path", help=SWEEP_PATH)
    c.add_argument("--no-aggregate", action="store_true", help="only results/*.parquet, no statistics or report")
    c.set_defaults(func=_cmd_sweep_collect)

    sb = sub.add_parser("submit", help="run a sweep as a Ray Job on a cluster (Ray Jobs API, needs ray[default])",
                        **_examples("localist submit sweeps/paper.yaml --storage s3://bucket/sweeps --follow",
                                    "localist submit sweeps/quick.yaml --address http://127.0.0.1:8265"))
    sb.add_argument("file", help="sweep file, inside the working directory (which is shipped with the job)")
    sb.add_argument("--address", help=ADDRESS)
    sb.add_argument("--storage", help="override the sweep's storage; every node must reach it (s3://, gs://, shared path)")
    sb.add_argument("--follow", action="store_true", help="stream the job's logs; exit with the job's status")
    sb.add_argument("--working-dir", default=".", help="folder shipped as the job's working directory (default .)")
    sb.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                    help="also set this variable in the job (NAME alone copies it from this shell)")
    sb.add_argument("--no-aws-env", action="store_true",
                    help="don't copy AWS_* credentials/endpoint into the job (nodes have their own S3 access)")
    sb.set_defaults(func=_cmd_submit)
    jb = sub.add_parser("jobs", help="list, inspect, follow and stop submitted jobs",
                        **_examples("localist jobs list", "localist jobs logs JOB_ID --follow"))
    jbs = jb.add_subparsers(dest="jobs", required=True, metavar="ACTION", help="one of these:")
    for name, text in [("list", "every job on the cluster"), ("status", "a job's status and exit code"),
                       ("logs", "a job's logs so far (--follow: until it ends)"), ("stop", "stop a running job")]:
        example = f"localist jobs {name}" + ("" if name == "list" else " localist-quick-20260101-120000-ab12")
        j = jbs.add_parser(name, help=text, **_examples(example + (" --follow" if name == "logs" else "")))
        if name != "list":
            j.add_argument("job_id", help="the job's id, as printed by submit and jobs list")
        if name == "logs":
            j.add_argument("--follow", action="store_true", help="keep streaming until the job ends")
        j.add_argument("--address", help=ADDRESS)
        j.set_defaults(func=_cmd_jobs)

    ag = sub.add_parser("aggregate", help="seed statistics, tests against the baseline, report",
                        **_examples("localist aggregate results/quick",
                                    "localist aggregate results/quick --baseline peak-0 --no-report"))
    ag.add_argument("path", help=SWEEP_PATH)
    ag.add_argument("--baseline", help="configuration to compare against (default: the one with peak 0)")
    ag.add_argument("--no-report", action="store_true", help="tables only, no HTML report or figures")
    ag.set_defaults(func=_cmd_aggregate)
    return p


def _exit_on_sigterm(signum, frame) -> None:
    """`ray job stop`, SLURM and Kubernetes send SIGTERM: unwind so locks are released."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return args.func(args)
    except UserError as e:  # ConfigError, SweepLocked, StorageError, ...: the message says what to fix
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code  # 2: bad input or refused; 3: the storage failed mid-run


if __name__ == "__main__":
    sys.exit(main())
