"""The pretraining stage of a sweep with `pretrain:`: the base is trained before the grid starts,
as a small sweep of its own (`spec.pretrain_stage`: one trial per base seed, no locality, its model
saved) in <storage>/pretrained/<key>/, with the same trainable, retries and checkpoints as the grid.

A base that is there already (trained by an earlier sweep naming the same config, or by this one
before a crash) is reused as it is; a stage cut short continues from Tune's state and each trial's
checkpoint, as a grid does. The sweep's `pretrain.json` records which base its trials fine-tuned.
A stop with notice during pretraining reaches its trials as it reaches the grid's (the driver's
`preempt.Drain` relays the request into the stage's folder, where they watch for it).
"""

from __future__ import annotations

import json
import time

from localist import io, trial_files
from localist.errors import UserError
from localist.model import MODEL_DIR
from orchestrator import layout
from orchestrator.spec import SweepSpec, Trial, expand, pretrain_stage
from orchestrator.sweep import tuners
from orchestrator.sweep.lock import SweepLock


class PretrainFailed(UserError, RuntimeError):
    """A base could not be pretrained: the grid does not start (exit 1, as for failed trials)."""

    exit_code = 1


def _state(uri: str, trial: Trial) -> str:
    """'ready' (a completed result and its saved model), 'diverged', or 'todo'."""
    out = layout.trial_dir(uri, trial.trial_id)
    if not trial_files.has_result(out):
        return "todo"
    if trial_files.read_result(out).get("status") != "completed":
        return "diverged"
    return "ready" if io.exists(io.join(out, MODEL_DIR, "config.json")) else "todo"


def ensure(spec: SweepSpec, source: str, sweep_uri: str, log, fit, prepare, drain=None) -> dict | None:
    """Pretrain the sweep's base unless it exists; returns (and writes as pretrain.json) its record.
    fit(tuner) runs a Tuner as the driver does (raising when Tune stopped early); prepare(trials)
    tokenises their corpora; drain: the driver's stop with notice (preempt.Drain)."""
    stage = pretrain_stage(spec, source)
    if stage is None:
        return None
    uri = stage.spec.uri
    trials = expand(stage.spec, f"{source}: pretrain")
    todo = [t for t in trials if _state(uri, t) == "todo"]  # (read again after training)
    reused = not todo  # there before this sweep started (a resume keeps what its first driver found)
    if io.exists(layout.pretrain_file(sweep_uri)):
        reused = json.loads(io.read_text(layout.pretrain_file(sweep_uri))).get("reused", reused)
    if todo:
        t0 = time.time()
        with SweepLock(uri):  # two drivers pretraining the same base at once: the second refuses
            if not io.exists(layout.spec_file(uri)):
                io.write_text(layout.spec_file(uri), layout.spec_text(stage.spec))
            log(f"[pretrain] base {stage.key}: pretraining {len(todo)} of {len(trials)} seed(s), "
                f"{stage.config.train.steps} steps on {stage.config.data.corpus} -> {uri}")
            prepare(trials)
            if drain is not None:
                drain.relay(uri)
            extra = [drain.callback()] if drain is not None else []
            tuner, restored = tuners.grid_tuner(stage.spec, trials, uri, log, extra=extra)
            if restored:
                log("[pretrain] restored Ray Tune state: the pretraining continues from its checkpoints")
            tuners.mark_final_errors(fit(tuner), uri)
            tuners.finished_checkpoints_removed(uri)
        log(f"[pretrain] base {stage.key} done in {time.time() - t0:.0f}s")
    else:
        log(f"[pretrain] base {stage.key}: reusing {uri} (pretrained before, by this or another sweep)")
    states = {t.trial_id: _state(uri, t) for t in trials}
    bad = {tid: why for tid, why in states.items() if why != "ready"}
    if bad:
        tid, why = next(iter(bad.items()))
        folder = layout.trial_dir(uri, tid)
        raise PretrainFailed(f"pretraining {tid} of base {stage.key} {'diverged' if why == 'diverged' else 'failed'}"
                             f" (see {folder}); the grid did not start. "
                             + ("Change pretrain: (a lower lr, say), then run again." if why == "diverged"
                                else f"Resume with: localist sweep resume {sweep_uri}"))
    record = {"key": stage.key, "folder": uri, "reused": reused, "per_seed": spec.pretrain.per_seed,
              "config": stage.config.model_dump(mode="json"), "bases": []}
    for t in trials:
        row = trial_files.read_result(layout.trial_dir(uri, t.trial_id))
        record["bases"].append({"seed": t.seed, "model": stage.base(t.seed), "steps": row.get("final_step"),
                                "eval_loss": row.get("eval_loss"), "eval_ppl": row.get("eval_ppl"),
                                "train_tokens": row.get("train_tokens"), "wall_s": row.get("wall_s")})
    io.write_text(layout.pretrain_file(sweep_uri), json.dumps(record, indent=1, default=str) + "\n")
    return record
