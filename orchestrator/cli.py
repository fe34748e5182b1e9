"""`localist` - the command line. User errors print one clear message and exit with code 2."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from localist.config import ConfigError

EXIT_USAGE = 2  # bad input, or refused (another driver holds the sweep)
EXIT_STORAGE = 3  # the results storage failed mid-run


def _cmd_train(a) -> int:
    from localist import config
    from localist.trainer import run_trial

    cfg = config.load(a.config, a.set)
    result = run_trial(cfg, a.out, trial_id=a.trial_id)
    return 0 if result.status == "completed" else 1


def _load_sweep(a):
    from localist.config import apply_overrides
    from orchestrator import spec as sweep_spec

    overrides = {}
    if a.storage:
        overrides["storage"] = a.storage
    if a.set:
        overrides["base"] = apply_overrides({}, a.set, source=f"{a.file}: --set")
    return sweep_spec.load(a.file, overrides)


def _cmd_sweep_run(a) -> int:
    from orchestrator import driver, dryrun
    from orchestrator.spec import expand

    sp = _load_sweep(a)
    trials = expand(sp, a.file)
    if a.dry_run:
        print(dryrun.render(sp, trials))
        return 0
    return driver.run(sp, a.file, address=a.address, aggregate=not a.no_aggregate, verbose=a.verbose)


def _cmd_sweep_resume(a) -> int:
    from orchestrator import driver

    return driver.resume(a.path.rstrip("/"), address=a.address, aggregate=not a.no_aggregate, verbose=a.verbose)


def _cmd_sweep_status(a) -> int:
    from orchestrator import driver, status

    sp = driver.load_saved(a.path)
    trials = driver.trials_of(sp, a.path, a.path, check_paths=False)
    if sp.search:
        from orchestrator.search_run import search_trials

        trials = search_trials(sp, a.path) + trials
    df = status.run_states(a.path, trials)
    print(status.summary_line(df, driver.concurrency(sp, len(df))))
    print(status.table(df))
    return 0


def _cmd_sweep_collect(a) -> int:
    from orchestrator import driver

    sp = driver.load_saved(a.path)
    return driver.finish(sp, driver.trials_of(sp, a.path, a.path, check_paths=False), a.path.rstrip("/"), print,
                         aggregate=not a.no_aggregate)


def _cmd_aggregate(a) -> int:
    from orchestrator.aggregate import aggregate

    aggregate(a.path.rstrip("/"), baseline=a.baseline, report=not a.no_report)
    return 0


def _cmd_submit(a) -> int:
    from orchestrator import submit

    return submit.submit(a.file, address=a.address, storage=a.storage, follow=a.follow, working_dir=a.working_dir,
                         forward_aws=not a.no_aws_env, extra_env=a.env)


def _cmd_jobs(a) -> int:
    from orchestrator import submit

    return submit.jobs(a.jobs, getattr(a, "job_id", None), address=a.address, follow=getattr(a, "follow", False))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localist", description="Progressive-localisation sweeps of localist GPT-2 on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one localist trial (no Ray)")
    t.add_argument("config", nargs="?", help="trial config YAML (default: the built-in tiny trial)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted key")
    t.add_argument("--out", required=True, help="output folder or URI for the Parquet files")
    t.add_argument("--trial-id", default="trial")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sweep", help="run, resume, inspect and collect sweeps").add_subparsers(dest="sweep", required=True)
    r = s.add_parser("run", help="run a sweep file (continues it if its storage already holds it)")
    r.add_argument("file")
    r.add_argument("--dry-run", action="store_true", help="print the trial table and compute, start nothing")
    r.add_argument("--address", help="attach to a running Ray cluster (default: start Ray locally)")
    r.add_argument("--storage", help="override the sweep's storage (path or URI such as s3://bucket/sweeps)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of every trial")
    r.add_argument("--no-aggregate", action="store_true", help="skip statistics and report at the end")
    r.add_argument("--verbose", action="store_true")
    r.set_defaults(func=_cmd_sweep_run)
    rs = s.add_parser("resume", help="finish an interrupted sweep: PATH is <storage>/<sweep name>")
    rs.add_argument("path")
    rs.add_argument("--address")
    rs.add_argument("--no-aggregate", action="store_true")
    rs.add_argument("--verbose", action="store_true")
    rs.set_defaults(func=_cmd_sweep_resume)
    st = s.add_parser("status", help="per-run state of a sweep, during or after a run")
    st.add_argument("path")
    st.set_defaults(func=_cmd_sweep_status)
    c = s.add_parser("collect", help="(re)write the consolidated results/*.parquet and the summary")
    c.add_argument("path")
    c.add_argument("--no-aggregate", action="store_true")
    c.set_defaults(func=_cmd_sweep_collect)

    sb = sub.add_parser("submit", help="run a sweep as a Ray Job on a cluster (Ray Jobs API, needs ray[default])")
    sb.add_argument("file", help="sweep file, inside the working directory (which is shipped with the job)")
    sb.add_argument("--address", help="the head's Jobs API (default $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)")
    sb.add_argument("--storage", help="override the sweep's storage; every node must reach it (s3://, gs://, shared path)")
    sb.add_argument("--follow", action="store_true", help="stream the job's logs; exit with the job's status")
    sb.add_argument("--working-dir", default=".", help="folder shipped as the job's working directory (default .)")
    sb.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                    help="also set this variable in the job (NAME alone copies it from this shell)")
    sb.add_argument("--no-aws-env", action="store_true",
                    help="don't copy AWS_* credentials/endpoint into the job (nodes have their own S3 access)")
    sb.set_defaults(func=_cmd_submit)
    jb = sub.add_parser("jobs", help="list, inspect, follow and stop submitted jobs")
    jbs = jb.add_subparsers(dest="jobs", required=True)
    for name, text in [("list", "every job on the cluster"), ("status", "a job's status and exit code"),
                       ("logs", "a job's logs so far (--follow: until it ends)"), ("stop", "stop a running job")]:
        j = jbs.add_parser(name, help=text)
        if name != "list":
            j.add_argument("job_id")
        if name == "logs":
            j.add_argument("--follow", action="store_true")
        j.add_argument("--address", help="the head's Jobs API (default as for submit)")
        j.set_defaults(func=_cmd_jobs)

    ag = sub.add_parser("aggregate", help="seed statistics, tests against the baseline, report")
    ag.add_argument("path", help="<storage>/<sweep name>")
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
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        from orchestrator.driver import StorageError
        from orchestrator.lock import SweepLocked

        if isinstance(e, StorageError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_STORAGE
        if isinstance(e, SweepLocked) or type(e).__name__ == "AggregateError":
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
