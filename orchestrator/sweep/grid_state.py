"""A grid Tuner's saved search state checked against its saved trial list before `Tuner.restore`
(grid, confirm and seed-round Tuners; searches have search_run._state_problem).

Tune saves the trial list (experiment_state-<time>.json) and its variant generator
(basic-variant-state-<time>.json: the grid points not yet made into trials) as two files, and
copies them to storage one after the other. A driver killed in between leaves them out of step:
a generator ahead of the list never makes the runs the list lacks (they would be skipped), one
behind it makes listed runs again (two trials of one run). Here the generator is rewritten to hold
exactly the grid's runs the list lacks, in grid order. With no readable generator state at all,
Tune's saved state is dropped and the grid starts as a new experiment (finished runs are skipped
by their results; the others start from step 0).
"""

from __future__ import annotations

import json

from localist import io
from orchestrator.sweep import tune_state

GENERATOR_PREFIX = "basic-variant-state-"


def _listed(state_uri: str) -> list[tuple[str, str]]:
    """(run id, Tune's trial id) of every trial in a saved trial list."""
    out = []
    for trial_json, _ in json.loads(io.read_text(state_uri))["trial_data"]:
        t = json.loads(trial_json)
        out.append((t["config"]["trial_id"], t["trial_id"]))
    return out


def _run(variant) -> str:
    return variant[1]["config"]["trial_id"]


def mend(experiment_uri: str, log) -> bool:
    """Make the newest generator state agree with the newest trial list (see the module's
    docstring). Returns False when Tune's saved state was dropped instead (the caller then starts
    a new experiment); True when it can be restored (mended, or already in step)."""
    from ray import cloudpickle
    from ray.tune.search.basic_variant import _VariantIterator
    from ray.tune.search.variant_generator import generate_variants

    state_uri = tune_state.newest(experiment_uri)
    if state_uri is None:
        return True
    names = sorted(n for n in io.listdir(experiment_uri) if n.startswith(GENERATOR_PREFIX) and n.endswith(".json"))
    listed = _listed(state_uri)
    try:
        gen_uri = io.join(experiment_uri, names[-1])
        state = cloudpickle.loads(io.read_bytes(gen_uri))
        (iterator,) = state["_iterators"]
    except Exception as e:  # noqa: BLE001 - none saved, or half-written (a half-written file reads as anything)
        why = "no generator state was saved" if not names else f"its generator state is unreadable ({type(e).__name__})"
        log(f"[sweep] {experiment_uri}: Tune's saved state is torn ({why}): starting it as a new experiment")
        for name in io.listdir(experiment_uri):
            if name.startswith((tune_state.STATE_PREFIX, GENERATOR_PREFIX)):
                io.delete(io.join(experiment_uri, name))
        for run, _ in listed:  # never mistaken for the new experiment's (a later mend picks by index)
            tune_state.remove_checkpoints(io.join(experiment_uri, run))
        return False
    runs = {run for run, _ in listed}
    grid = list(generate_variants(iterator.unresolved_spec, constant_grid_search=iterator.constant_grid_search,
                                  random_state=iterator.random_state))
    made = iterator.num_samples_left == 0  # the grid's variants were made (those not yet trials are `variants`)
    to_come = [_run(v) for v in (iterator.variants.iterable if iterator.variants else [])] if made else \
        [_run(v) for v in grid]
    missing = [v for v in grid if _run(v) not in runs]
    if to_come == [_run(v) for v in missing]:
        return True  # every run of the grid is listed or still to come, once
    iterator.variants, iterator.num_samples_left = _VariantIterator(missing, lazy_eval=False), 0
    taken = [int(tid.rsplit("_", 1)[1]) for _, tid in listed if tid.rsplit("_", 1)[-1].isdigit()]
    iterator.counter = max([iterator.counter, *(i + 1 for i in taken)])  # Tune's trial ids stay unique
    state["_finished"], state["_live_trials"] = not missing, set()
    io.write_bytes(gen_uri, cloudpickle.dumps(state))
    log(f"[sweep] {experiment_uri}: Tune's saved state is torn (its trial list has {len(listed)} of the grid's "
        f"{len(grid)} runs, its generator was to make {len(to_come)} more): mended, {len(missing)} still to come")
    return True
