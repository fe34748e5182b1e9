"""What a sweep gives when nothing goes wrong, for fault tests and the chaos soak to compare with:
every run of the sweep trained in this process, one after another, with the torch threads a trial
of the sweep gets (its CPUs), into a sweep folder, then collected and aggregated as the driver does.

Trials resume step-seeded (data order, dropout and optimizer state come back from the checkpoint),
so a run that was killed, retried or stopped and resumed ends with the same numbers as these.
"""

from __future__ import annotations

import os

import torch

from localist import io
from localist.trainer import Trainer
from orchestrator import layout
from orchestrator import spec as sweep_spec

# trial.parquet columns a sweep trial adds (where and how often it ran, its own timings): placeholders here
SWEEP_EXTRA = {"node_id": "", "node_ip": "", "attempts": 1, "setup_config_s": 0.0, "report_s": 0.0}


def run(spec_file: str, out: str, aggregate: bool = True) -> str:
    """The sweep of spec_file, undisturbed, at <out>/<name> (its storage replaced by out); that folder."""
    from orchestrator.sweep.driver import finish

    spec = sweep_spec.load(spec_file, {"storage": os.path.abspath(out)})
    trials = sweep_spec.expand(spec, spec_file)
    sweep_uri = spec.uri
    io.write_text(layout.spec_file(sweep_uri), layout.spec_text(spec))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    try:
        for run_id, cfg in sweep_spec.runs(trials).items():
            Trainer(cfg, layout.trial_dir(sweep_uri, run_id), run_id, log=lambda *_: None, extra=SWEEP_EXTRA).fit()
    finally:
        torch.set_num_threads(threads)
    finish(spec, trials, sweep_uri, lambda *_: None, aggregate=aggregate)
    return sweep_uri


def eval_losses(sweep_uri: str) -> dict[str, float]:
    """run id -> final eval loss of a sweep's consolidated results."""
    df = io.read_parquet(layout.results_file(sweep_uri, "trials")).to_pandas()
    return dict(zip(df.run_trial_id, df.eval_loss))
