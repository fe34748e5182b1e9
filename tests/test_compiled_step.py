"""The GPU training step, proven on a CPU: the real ``Trainer`` compiles its step to one graph for
every variant the sweeps run, never compiles again, and makes no host sync in a steady step.

FlexAttention is forced on (as a GPU's plan chooses it) and run through its dense CPU reference;
torch refuses FlexAttention's backward on CPU by a device check only, lifted here for the test
(``_validate_device``). Dynamo decides graphs, breaks and recompiles the same way for every
backend, so ``aot_eager`` (the joint forward/backward graph, run eagerly) stands in for
inductor, whose CPU kernels take minutes to build on 2 cores.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from benchmarks.common import synthetic_data
from localist import compute, flex
from localist.attention import EXPLICIT, FLEX_HARD, FLEX_SOFT, SDPA_CAUSAL, SDPA_MASK
from localist.config_files import build
from localist.model import attn_dropout
from localist.speed import dynamo_counts
from localist.trainer import Trainer
from tests.host_syncs import HostSyncs

pytestmark = pytest.mark.skipif(not flex.available(), reason="this torch has no FlexAttention")

L, E, H, VOCAB, SEQ, BATCH = 4, 32, 2, 256, 64, 2
QUINTIC = {"peak": 1.0, "schedule": "polynomial", "power": 5}
SOFT_SOFT_HARD = [SDPA_CAUSAL, FLEX_SOFT, FLEX_SOFT, FLEX_HARD]  # quintic's lambdas over 4 layers
VARIANTS = {  # name -> (locality, grad_accum, hub-style model?, the paths a GPU plan gives each layer)
    "vanilla": ({"peak": 0.0}, 1, False, [SDPA_CAUSAL] * L),
    "bias quintic": (QUINTIC, 1, False, SOFT_SOFT_HARD),
    "uniform strict": ({"peak": 1.0, "schedule": "uniform"}, 1, False, [FLEX_HARD] * L),
    "window": ({**QUINTIC, "partition": "window", "window": 8}, 1, False, SOFT_SOFT_HARD),
    "penalty": ({**QUINTIC, "mechanism": "penalty"}, 1, False, [SDPA_CAUSAL] + [EXPLICIT] * 3),
    # the paper's shape: a hub GPT-2 config (attention, residual and embedding dropout 0.1) saved
    # locally, fine-tuned with grad_accum 4; model.attn_dropout (0) keeps it on FlexAttention
    "paper": (QUINTIC, 4, True, SOFT_SOFT_HARD),
}


@pytest.fixture(scope="module")
def hub_model(tmp_path_factory) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=E, n_layer=L, n_head=H)  # hub defaults: 0.1
    assert config.attn_pdrop == 0.1 and config.resid_pdrop == 0.1
    path = tmp_path_factory.mktemp("hub-gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def _flex_on_cpu(monkeypatch):
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda *a: None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield


def make_trainer(variant: str, tmp_path, hub: str, compiled: bool, backend=None, steps: int = 10) -> Trainer:
    loc, accum, hub_style, _ = VARIANTS[variant]
    model = {"name": hub} if hub_style else {"name": "tiny", "n_layer": L, "n_embd": E, "n_head": H}
    tree = {"model": model, "data": {"corpus": "pydoc", "seq_len": SEQ},
            "train": {"steps": steps, "batch_size": BATCH, "grad_accum": accum, "compile": str(compiled).lower(),
                      "log_every": steps, "eval_every": steps, "warmup_steps": 1}, "locality": loc}
    return Trainer(build(tree, "test"), str(tmp_path), variant, log=lambda s: None,
                   data=synthetic_data({"vocab": VOCAB}, SEQ, 16), backend=backend, force_flex=True)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compiled_step_is_one_graph_and_never_recompiles(variant, tmp_path, hub_model):
    """Three steps of the real loop (fit: steps, an evaluation, the trial's Parquet): one graph for
    the whole forward + loss (+ its backward), no graph break, nothing compiled after step 1."""
    import pyarrow.parquet as pq
    from torch._dynamo.testing import CompileCounterWithBackend

    graphs = CompileCounterWithBackend("aot_eager")  # counts the graphs dynamo hands the backend
    before = dynamo_counts()
    tr = make_trainer(variant, tmp_path, hub_model, compiled=True, backend=graphs, steps=3)
    assert list(tr.plan.paths) == VARIANTS[variant][3]
    result = tr.fit()
    counts = dynamo_counts(since=before)
    assert graphs.frame_count == 1 and counts["frames"] == 1, f"{variant}: {graphs.frame_count} graphs"
    assert counts["graph_breaks"] == 0
    figures = tr.speed_figures()
    assert figures["recompiles"] == 0 and figures["graph_breaks"] == 0 and figures["compiled_frames"] == 1
    assert figures["compile_s"] > 0 and result.status == "completed" and math.isfinite(result.eval_loss)
    row = pq.read_table(tmp_path / "trial.parquet").to_pylist()[0]
    assert json.loads(row["attention_paths"]) == VARIANTS[variant][3] and row["recompiles"] == 0


def test_paper_shape_takes_the_fast_path_on_a_gpu(tmp_path, hub_model):
    """The hub config says attention dropout 0.1; the trial runs with model.attn_dropout (0), so a
    GPU's plan puts its localist layers on FlexAttention; keeping 0.1 sends them to SDPA masks."""
    tr = make_trainer("paper", tmp_path, hub_model, compiled=False)
    assert attn_dropout(tr.model) == 0.0 and tr.model.config.resid_pdrop == 0.1
    assert compute.flex_decision("cuda", "bias", attn_dropout(tr.model)) == (True, "FlexAttention")
    on, why = compute.flex_decision("cuda", "bias", 0.1)
    assert not on and "attention dropout 0.1" in why
    cfg = tr.cfg.model_copy(update={"model": tr.cfg.model.model_copy(update={"attn_dropout": 0.1})})
    assert compute.plan(cfg, "cuda", tr.lambdas, 0.1).paths == (SDPA_CAUSAL, SDPA_MASK, SDPA_MASK, SDPA_MASK)


@pytest.mark.parametrize("variant", ["bias quintic", "window", "penalty", "paper"])
def test_steady_step_makes_no_host_sync(variant, tmp_path, hub_model):
    """Eager, so every call outside the compiled graph is seen (inside it a sync would be a graph
    break, which the test above rules out); the first step builds and warms, the second is counted."""
    tr = make_trainer(variant, tmp_path, hub_model, compiled=False)
    tr.train_step()
    tr.step += 1
    with HostSyncs() as syncs:
        tr.train_step()
    assert not syncs.seen, f"{variant}: {dict(syncs.seen)}"


def test_host_sync_counter_sees_syncs():
    x = torch.randn(4)
    with HostSyncs() as syncs:
        torch.tensor(0.5, device=x.device)
        x.sum().item()
        bool(x[0] > 0)
        torch.full((), 0.5, device=x.device)  # a fill on the device: no sync, not counted
        torch.tensor([1, 2])  # a host tensor: not counted
        x.nonzero()
    assert syncs.seen["tensor"] == 1 and syncs.seen["item"] == 1 and syncs.seen["__bool__"] == 1
    assert syncs.seen["nonzero"] == 1 and sum(syncs.seen.values()) == 4


def test_flex_failure_falls_back_to_sdpa_masks_outside_the_step(tmp_path, hub_model, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(flex, "_flex_attention", broken)
    tr = make_trainer("bias quintic", tmp_path, hub_model, compiled=False)
    assert tr.plan.uses_flex
    assert math.isfinite(float(tr.train_step()))
    assert list(tr.plan.paths) == [SDPA_CAUSAL, SDPA_MASK, SDPA_MASK, SDPA_MASK]
    assert tr.plan.flex_note.startswith("failed: RuntimeError: no kernel")
    assert tr.speed_figures()["flex_note"] == tr.plan.flex_note
