"""Tune's saved experiment state (experiment_state-<time>.json in a Tune experiment folder): found,
read, and mended before `Tuner.restore` so that every trial resumes from its newest checkpoint.

Why mend: with `keep_checkpoints` (Tune's `num_to_keep`) Tune deletes a trial's older checkpoint the
moment it registers a newer one, and saves the experiment state only afterwards (at the next turn
of its loop, then copied to storage in the background; later still when a copy is under way). A
driver killed in between leaves a state that names a checkpoint gone from storage, and Tune fails
that trial on every retry ("Could not recover from checkpoint as it does not exist on storage
anymore"). A state saved before the newest checkpoint was registered names an older one, and the
trial would redo the steps in between. So each trial Tune will resume is pointed at the newest
checkpoint folder on storage that is whole (`localist.trainer.checkpoint_step`; emptied ones count:
the trainable knows them), or at none, and it starts from step 0.
"""

from __future__ import annotations

import json
import re

from localist import io
from orchestrator import layout

STATE_PREFIX = "experiment_state-"  # Tune restores from the newest (by name) of these
_INDEX = re.compile(rf"{layout.TUNE_CHECKPOINT_PREFIX}(\d+)$")


def newest(experiment_uri: str) -> str | None:
    """The state file Tune restores from (None: no state was saved)."""
    names = sorted(n for n in io.listdir(experiment_uri) if n.startswith(STATE_PREFIX) and n.endswith(".json"))
    return io.join(experiment_uri, names[-1]) if names else None


def trial_count(state_uri: str) -> int:
    return len(json.loads(io.read_text(state_uri))["trial_data"])


def _decode(field):
    """An object Tune's encoder cloudpickled into the state (the state is this sweep's own: Tune
    unpickles the same bytes when it restores)."""
    from ray.tune.utils.serialization import TuneFunctionDecoder

    return json.loads(json.dumps(field), cls=TuneFunctionDecoder, allow_cloudpickle=True)


def _encode(obj):
    from ray.tune.utils.serialization import TuneFunctionEncoder

    return json.loads(json.dumps(obj, cls=TuneFunctionEncoder))


def remove_checkpoints(trial_uri: str) -> None:
    """Every checkpoint folder of a trial's Tune folder, and the Ray Train run of a multi-worker
    trial (its checkpoints)."""
    for name in io.listdir(trial_uri):
        if name.startswith(layout.TUNE_CHECKPOINT_PREFIX) or name == layout.TRAIN_RUN:
            io.delete(io.join(trial_uri, name))


def _checkpoints(trial_uri: str) -> dict[int, str]:
    """index -> folder name of the trial's checkpoint folders on storage."""
    return {int(m.group(1)): name for name in io.listdir(trial_uri) if (m := _INDEX.match(name))}


def _usable(folder_uri: str) -> tuple[bool, int | None]:
    """(can the trainable resume from it, the step it holds when known)."""
    from localist.trainer import checkpoint_step  # torch and transformers: only when a folder is judged

    if io.exists(io.join(folder_uri, layout.CHECKPOINT_EMPTIED)):
        return True, None  # a completed trial's (it reports its result) or a stopped search trial's
    step = checkpoint_step(folder_uri)
    return step is not None, step


def _folder(result) -> str:
    return result.checkpoint.path.rstrip("/").rsplit("/", 1)[-1]


def _choose(trial_uri: str, on_storage: dict[int, str], saved: set[str]) -> tuple[str | None, int | None]:
    """The newest checkpoint folder to resume from, and its step when read: one the state names
    (Tune reported it after it was written whole), or one that is whole; (None, None): none is."""
    for index in sorted(on_storage, reverse=True):
        folder = on_storage[index]
        if folder in saved:
            return folder, None
        ok, step = _usable(io.join(trial_uri, folder))
        if ok:
            return folder, step
    return None, None


def _mend_trial(experiment_uri: str, trial_json: str, meta_json: str) -> tuple[str, str, str] | None:
    """The trial's state pointed at its newest usable checkpoint: (trial json, metadata json, what
    the trial now does, '' when Tune would have done the same), or None when nothing changes
    (already so, or a finished trial, which Tune does not resume). Edits the pinned Ray's
    _CheckpointManager and StorageContext (tests/test_reliability.py restores what it writes)."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.train.constants import CHECKPOINT_DIR_NAME

    trial, meta = json.loads(trial_json), json.loads(meta_json)
    if trial["status"] == "TERMINATED" or not trial.get("relative_logdir") or meta.get("checkpoint_manager") is None:
        return None
    manager, storage = _decode(meta["checkpoint_manager"]), _decode(trial["storage"])
    latest = manager.latest_checkpoint_result
    saved = {_folder(r): r for r in [*manager._checkpoint_results, *([latest] if latest else [])]}
    trial_uri = io.join(experiment_uri, trial["relative_logdir"])
    on_storage = _checkpoints(trial_uri)
    chosen, step = _choose(trial_uri, on_storage, set(saved))
    if chosen is None or chosen in saved:
        result = saved.get(chosen)
    else:  # Tune restores the trainable's counters from these metrics; ours come from the checkpoint itself
        metrics = {**(latest.metrics if latest else {}), CHECKPOINT_DIR_NAME: chosen}
        if step is not None:
            metrics.update(step=step, timesteps_total=step)
        result = _TrainingResult(Checkpoint(path=f"{storage.trial_fs_path}/{chosen}",
                                            filesystem=storage.storage_filesystem), metrics)
    kept = [r for r in manager._checkpoint_results if r is not result and _folder(r) in on_storage]
    results = kept + ([result] if result else [])
    next_index = max([storage.current_checkpoint_index, *on_storage])  # never write into a folder that is there
    if result is latest and results == manager._checkpoint_results and next_index == storage.current_checkpoint_index:
        return None
    manager._checkpoint_results, manager._latest_checkpoint_result = results, result
    storage.current_checkpoint_index = next_index
    trial["storage"], meta["checkpoint_manager"] = _encode(storage), _encode(manager)
    said = ""
    if result is not latest:
        named = _folder(latest) if latest else None
        why = (f"Tune's saved state names {named}, which is gone from storage" if named and named not in on_storage
               else f"Tune's saved state names {named or 'no checkpoint'}; {chosen} is newer")
        if result is None:
            said = f"{why}, and no whole checkpoint is left: it starts again from step 0"
        else:
            said = f"{why}: it resumes from {chosen}" + (f" (step {step})" if step is not None else "")
    return json.dumps(trial, indent=2), json.dumps(meta, indent=2), said


def mend(experiment_uri: str, log) -> list[str]:
    """Point every trial Tune will resume from the newest state at its newest whole checkpoint on
    storage (see the module's docstring), rewriting the state when one changed. Returns the trials
    whose checkpoint changed; logs each."""
    state_uri = newest(experiment_uri)
    if state_uri is None:
        return []
    state = json.loads(io.read_text(state_uri))
    changed, rewrite = [], False
    for i, (trial_json, meta_json) in enumerate(state["trial_data"]):
        mended = _mend_trial(experiment_uri, trial_json, meta_json)
        if mended is None:
            continue
        state["trial_data"][i], rewrite = [mended[0], mended[1]], True
        if mended[2]:
            name = json.loads(trial_json)["relative_logdir"]
            changed.append(name)
            log(f"[sweep] {name}: {mended[2]}")
    if rewrite:
        io.write_text(state_uri, json.dumps(state))
    return changed
