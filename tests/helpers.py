"""Helpers for tests that run real sweeps through the CLI in subprocesses."""

import json
import os
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tests.conftest import TINY

CLI = [sys.executable, "-m", "orchestrator.cli"]


def write_sweep(path: Path, name: str, storage: Path, steps: int = 12, checkpoint_every: int = 0,
                log_every: int | None = None, base_data: dict | None = None, eval_every: int | None = None,
                **extra) -> Path:
    base = json.loads(json.dumps(TINY))
    base["data"].update(base_data or {})
    base["train"].update(steps=steps, eval_every=eval_every or steps // 2, log_every=log_every or steps // 2)
    spec = {
        "name": name, "storage": str(storage), "base": base,
        "grid": {"configuration": {"peak-0": {"locality": {"peak": 0.0}}, "peak-1": {"locality": {"peak": 1.0}}},
                 "schedule": {"linear": {"locality": {"power": 1}}, "quintic": {"locality": {"power": 5}}},
                 "seeds": [1]},
        "comparators": {"uniform-strict": {"locality": {"schedule": "uniform", "peak": 1.0}}},
        "resources": {"cpu": 1}, "max_concurrent": 2, "retries": 1, "checkpoint_every": checkpoint_every,
        **extra,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# What legitimately differs between two runs of the same trial: timing, memory and provenance.
VOLATILE = {"wall_s", "train_s", "tokens_per_s", "peak_mem_mb", "node_id", "node_ip", "hostname", "attempts", "elapsed_s",
            "setup_config_s", "setup_accelerator_s", "setup_data_s", "setup_model_s", "setup_blocks_s",
            "setup_prepare_s", "report_s", "outputs_s", "first_step_at"}
# results/<kind>.parquet and the columns that make a row unique
RESULT_KEYS = {"trials": ["trial_id"], "steps": ["trial_id", "split", "step"], "layers": ["trial_id", "step", "layer"],
               "attention": ["trial_id", "layer", "query", "key"]}


def same_content(a: pd.DataFrame, b: pd.DataFrame, key: list[str]) -> None:
    cols = sorted(c for c in a.columns if c not in VOLATILE)
    assert cols == sorted(c for c in b.columns if c not in VOLATILE)
    a, b = (x[cols].sort_values(key).reset_index(drop=True) for x in (a, b))
    for c in cols:
        if pd.api.types.is_float_dtype(a[c]):
            assert np.allclose(a[c], b[c], rtol=1e-6, atol=1e-9, equal_nan=True), c
        else:
            assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c


def same_results(mine, theirs) -> None:
    """Two sweeps' consolidated results agree (each reader: kind -> its results/<kind>.parquet as a
    DataFrame), with no row twice: a trial that was redone never shows twice."""
    for kind, key in RESULT_KEYS.items():
        a = mine(kind)
        assert not a.duplicated(key).any(), kind
        same_content(a, theirs(kind), key)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.getcwd(), **extra}


def held(trial_id: str, step: int, until: Path) -> dict[str, str]:
    """Environment that holds one trial before `step` until the file `until` exists (the 'wait' of
    localist.faults): the test decides when that trial may go on instead of racing the sweep."""
    return {"LOCALIST_FAULT": f"wait@{step}:{until}#{trial_id}"}


def progress_step(sweep: Path, run_id: str) -> int:
    """The step of a trial's latest progress record (-1: none yet)."""
    f = sweep / "trials" / run_id / "progress.json"
    return json.loads(f.read_text())["step"] if f.exists() else -1


def attempts(sweep: Path) -> dict[str, int]:
    return {d.name: len(list((d / "attempts").glob("*.json"))) for d in (sweep / "trials").iterdir()}


def wait_for(predicate, timeout, proc):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def kill_session(proc):
    """SIGKILL the driver and the local Ray it started, all at once (a crash of that machine).
    They share the process group the test created for them; no other process is touched."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone, with everything it started
        return
    proc.wait(timeout=30)
    end = time.time() + 30
    while time.time() < end:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError("processes of the killed sweep are still alive")


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TensorBoard event files in a folder, read with tensorboardX's
    Event protobuf (the files are TFRecords: length, its CRC, the record, its CRC)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def wandb_runs(folder: Path) -> list[dict]:
    """The offline W&B runs under `folder` (a wandb.init dir): name, project, group, config and history
    rows of each, read from its run-<id>.wandb file without W&B's service or the network. The file is
    W&B's transaction log: a 7-byte header, then LevelDB log blocks of 32 KiB holding protobuf Records
    in chunks (type 1 whole, 2 first, 3 middle, 4 last), each behind a 7-byte checksum/length/type header."""
    from wandb.proto import wandb_internal_pb2 as pb

    def records(data: bytes):
        assert data[:4] == b":W&B", data[:7]
        i, parts, block = 7, b"", 32768
        while i + 7 <= len(data):
            if block - i % block < 7:  # no room for a header: the rest of the block is padding
                i += block - i % block
                continue
            _, n, kind = struct.unpack("<IHB", data[i:i + 7])
            chunk, i = data[i + 7:i + 7 + n], i + 7 + n
            if kind in (1, 2):
                parts = chunk
            elif kind in (3, 4):
                parts += chunk
            if kind in (1, 4):
                yield parts

    runs = []
    for f in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        run: dict = {"config": {}, "history": []}
        for data in records(f.read_bytes()):
            r = pb.Record.FromString(data)
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run.update(name=r.run.display_name, project=r.run.project, group=r.run.run_group)
                run["config"].update({c.key: json.loads(c.value_json) for c in r.run.config.update})
            elif kind == "config":
                run["config"].update({c.key: json.loads(c.value_json) for c in r.config.update})
            elif kind == "history":
                run["history"].append({"/".join(h.nested_key) or h.key: json.loads(h.value_json)
                                       for h in r.history.item})
        runs.append(run)
    return runs
