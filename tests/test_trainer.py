"""Real tiny trials through the Accelerate loop: outputs, determinism, locality, resume, hub loading."""

import json
import math

import pandas as pd
import pytest

from localist.outputs import LAYER_COLUMNS, STEP_COLUMNS
from localist.trainer import Trainer, run_trial


def layers(out):
    df = pd.read_parquet(f"{out}/layers.parquet")
    return df[df.step == df.step.max()].set_index("layer")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three short trials: distributed with two seeds, and quintic peak-1 with the first seed."""
    from localist.config_files import build
    from tests.conftest import tiny_tree

    root = tmp_path_factory.mktemp("trials")
    specs = {"base1": ({"peak": 0.0}, 1), "base1b": ({"peak": 0.0}, 1), "base2": ({"peak": 0.0}, 2),
             "quintic1": ({"peak": 1.0, "schedule": "polynomial", "power": 5}, 1)}
    results = {}
    for name, (loc, seed) in specs.items():
        cfg = build({**tiny_tree(locality=loc), "seed": seed}, "test")
        results[name] = run_trial(cfg, str(root / name), trial_id=name, log=lambda *_: None)
    return root, results


def test_outputs_have_the_documented_columns(trained):
    root, results = trained
    out = root / "quintic1"
    steps = pd.read_parquet(out / "steps.parquet")
    assert list(steps.columns) == STEP_COLUMNS
    assert set(steps.split) == {"train", "eval"} and steps.step.max() == 20
    assert list(pd.read_parquet(out / "layers.parquet").columns) == LAYER_COLUMNS
    trial = pd.read_parquet(out / "trial.parquet")
    assert len(trial) == 1
    row = trial.iloc[0]
    assert row.status == "completed" and row["locality.peak"] == 1.0 and row["model.n_layer"] == 3
    assert row.eval_ppl == pytest.approx(math.exp(row.eval_loss))
    for col in ("train_tokens", "tokens_per_s", "wall_s", "peak_mem_mb", "version.torch", "version.transformers",
                "n_params", "eval_loss_pos1", "eval_loss_pos2_4", "eval_loss_pos5p"):
        assert col in trial.columns and pd.notna(row[col]), col
    # a GPT-2 of the TINY shape (3 x 64, vocab 1024, 64 positions, tied embeddings)
    assert row.n_params == 1024 * 64 + 64 * 64 + 3 * (12 * 64 * 64 + 13 * 64) + 2 * 64
    assert row.train_tokens == 20 * 4 * 64
    att = pd.read_parquet(out / "attention.parquet")
    assert set(att.layer) == {0, 2} and (att.key <= att["query"]).all()
    sums = att.groupby(["layer", "query"]).weight.sum()
    assert sums.min() > 0.999 - 1e-6  # each query's row (truncated to the sample) keeps its causal mass


def test_step0_evaluates_the_starting_model_under_the_trials_locality(trained, tiny_config, tmp_path):
    """Step 0 is the untouched model under the trial's locality: same seed, same weights, so base
    and quintic differ only where quintic's lambda does (its last layer, not its first). Evaluating
    it draws no random numbers: a trial without it trains to the same result."""
    root, results = trained
    for name in ("base1", "quintic1"):
        row = pd.read_parquet(root / name / "trial.parquet").iloc[0]
        steps = pd.read_parquet(root / name / "steps.parquet")
        first = steps[(steps.split == "eval") & (steps.step == 0)]
        assert len(first) == 1 and row.step0_eval_loss == first.loss.iloc[0]
        assert row.step0_eval_ppl == pytest.approx(math.exp(row.step0_eval_loss))
        assert row.step0_eval_loss > row.eval_loss  # training moved it
        assert all(pd.notna(row[f"step0_{g}"]) for g in ("eval_loss_pos1", "eval_loss_pos2_4", "eval_loss_pos5p"))
    start = {name: pd.read_parquet(root / name / "layers.parquet").query("step == 0").set_index("layer")
             for name in ("base1", "quintic1")}
    assert len(start["quintic1"]) == 3 and start["quintic1"].loc[2, "in_block_mass"] >= 0.99
    assert start["base1"].loc[2, "in_block_mass"] < 0.9
    assert start["quintic1"].loc[0, "in_block_mass"] == pytest.approx(start["base1"].loc[0, "in_block_mass"])
    from localist.config_files import build
    from tests.conftest import tiny_tree

    plain = build({**tiny_tree(locality={"peak": 0.0}, train={"eval_at_start": False}), "seed": 1}, "test")
    res = run_trial(plain, str(tmp_path), log=lambda *_: None)
    assert res.eval_loss == results["base1"].eval_loss
    assert pd.read_parquet(tmp_path / "steps.parquet").query("split == 'eval'").step.min() > 0
    assert math.isnan(pd.read_parquet(tmp_path / "trial.parquet").iloc[0].step0_eval_loss)


def test_seed_determinism(trained):
    _, r = trained
    assert r["base1"].eval_loss == r["base1b"].eval_loss
    assert r["base1"].eval_loss != r["base2"].eval_loss


def test_quintic_localises_last_layer_and_keeps_first_layer(trained):
    root, _ = trained
    q, b1, b2 = layers(root / "quintic1"), layers(root / "base1"), layers(root / "base2")
    assert q.loc[2, "in_block_mass"] >= 0.99
    assert b1.loc[2, "in_block_mass"] < 0.9
    for col in ("entropy_bits", "entropy_norm", "in_block_mass"):
        noise = abs(b1.loc[0, col] - b2.loc[0, col])
        assert abs(q.loc[0, col] - b1.loc[0, col]) <= 3 * noise + 1e-3, col


def test_resume_from_checkpoint_gives_the_same_result(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config(train={"checkpoint_every": 5, "log_every": 4}, locality={"peak": 0.5})
    clean = run_trial(cfg, str(tmp_path / "clean"), log=lambda *_: None)
    monkeypatch.setenv("LOCALIST_FAULT", f"raise@13:{tmp_path / 'fired'}")
    from localist.faults import InjectedFault

    with pytest.raises(InjectedFault):
        run_trial(cfg, str(tmp_path / "faulty"), log=lambda *_: None)
    assert (tmp_path / "faulty" / "checkpoint" / "trainer_state.json").exists()
    partial = pd.read_parquet(tmp_path / "faulty" / "steps.parquet")  # written at step 10's eval/checkpoint
    assert not (tmp_path / "faulty" / "trial.parquet").exists()
    assert partial.step.max() == 10 and partial[partial.split == "eval"].step.tolist() == [0, 10]
    logs = []
    resumed = run_trial(cfg, str(tmp_path / "faulty"), log=logs.append)
    assert any("resumed from step 10" in line for line in logs)
    assert resumed.eval_loss == pytest.approx(clean.eval_loss, abs=1e-6)
    steps = pd.read_parquet(tmp_path / "faulty" / "steps.parquet")
    assert steps.groupby(["split", "step"]).size().max() == 1  # no duplicated rows after resume
    clean_steps = pd.read_parquet(tmp_path / "clean" / "steps.parquet")
    # a train-loss window that spans the checkpoint (steps 9-12) is carried across the resume
    pd.testing.assert_frame_equal(steps.drop(columns="elapsed_s"), clean_steps.drop(columns="elapsed_s"),
                                  rtol=1e-6)


def test_a_stop_request_checkpoints_after_the_current_step_and_resume_redoes_none(tiny_config, tmp_path):
    """fit's stop_requested (a sweep's stop with notice): at the first step it says so, that step's
    checkpoint is saved and fit raises Preempted; resuming from it ends as a run that never stopped."""
    from localist.trainer import Preempted

    cfg = tiny_config(train={"checkpoint_every": 8, "log_every": 4}, locality={"peak": 0.5})
    clean = Trainer(cfg, str(tmp_path / "clean"), log=lambda *_: None).fit()
    saved = []

    def save(tr):  # as the sweep trainable: the checkpoint of the step, and whether a stop asked for it
        d = tmp_path / f"ckpt{tr.step}"
        d.mkdir()
        tr.save_checkpoint(str(d))
        saved.append((tr.step, tr.stopping, d))

    first = Trainer(cfg, str(tmp_path / "run"), log=lambda *_: None)
    with pytest.raises(Preempted) as stopped:
        first.fit(on_checkpoint=save, stop_requested=lambda: first.step >= 11)
    assert stopped.value.args[0] == 11 and [(s, why) for s, why, _ in saved] == [(8, False), (11, True)]
    second = Trainer(cfg, str(tmp_path / "run"), log=lambda *_: None)
    second.load_checkpoint(str(saved[-1][2]))
    assert second.step == 11
    assert second.fit(on_checkpoint=save).eval_loss == clean.eval_loss  # exactly
    steps = pd.read_parquet(tmp_path / "run" / "steps.parquet")
    clean_steps = pd.read_parquet(tmp_path / "clean" / "steps.parquet")
    pd.testing.assert_frame_equal(steps.drop(columns="elapsed_s"), clean_steps.drop(columns="elapsed_s"))


def test_a_checkpoint_copied_in_part_is_not_whole(tiny_config, tmp_path):
    """A checkpoint's state file lists its other files with their sizes: a copy cut short (a file
    missing or short) reads as not whole, as does a checkpoint whose state lists nothing."""
    from localist.trainer import STATE_FILE, checkpoint_step

    trainer = Trainer(tiny_config(), str(tmp_path / "out"), log=lambda *_: None)
    trainer.step = 7
    d = tmp_path / "ckpt"
    d.mkdir()
    trainer.save_checkpoint(str(d))
    assert checkpoint_step(str(d)) == 7
    model = d / "model.safetensors"
    data = model.read_bytes()
    model.write_bytes(data[:-1])
    assert checkpoint_step(str(d)) is None
    model.unlink()
    assert checkpoint_step(str(d)) is None
    model.write_bytes(data)
    state = json.loads((d / STATE_FILE).read_text())
    (d / STATE_FILE).write_text(json.dumps({k: v for k, v in state.items() if k != "files"}))
    assert checkpoint_step(str(d)) is None
    (d / STATE_FILE).write_text(json.dumps(state)[:50])
    assert checkpoint_step(str(d)) is None and checkpoint_step(str(tmp_path / "nothing")) is None


def test_wait_fault_holds_a_step_until_its_file_exists(tmp_path, monkeypatch):
    import threading

    from localist import faults

    go = tmp_path / "go"
    monkeypatch.setenv("LOCALIST_FAULT", f"wait@3:{go}#t")
    assert faults.check(3, "other") is None and faults.check(2, "t") is None  # not its step or trial
    held = threading.Thread(target=faults.check, args=(3, "t"), daemon=True)
    held.start()
    held.join(0.3)
    assert held.is_alive()  # it returns only once the file exists
    go.touch()
    held.join(30)
    assert not held.is_alive()


def test_metrics_at_each_log_and_eval_and_partial_files(tiny_config, tmp_path):
    """on_metrics at log/eval steps; a checkpoint step's metrics go with the checkpoint; the last
    step's stay on the trainer; steps/layers.parquet exist mid-run, trial.parquet only at the end."""
    cfg = tiny_config(train={"log_every": 4, "checkpoint_every": 5})
    trainer = Trainer(cfg, str(tmp_path), log=lambda *_: None)
    seen = []

    def on_checkpoint(tr):
        seen.append(("checkpoint", tr.step, sorted(tr.metrics)))
        assert (tmp_path / "steps.parquet").exists() and not (tmp_path / "trial.parquet").exists()

    trainer.fit(on_checkpoint=on_checkpoint, on_metrics=lambda m: seen.append(("metrics", trainer.step, sorted(m))))
    train = sorted(["train_loss", "lr", "tokens_per_s", "tokens_seen"])
    evals = sorted(["eval_loss", "eval_ppl"] + [f"layer{i}/{q}" for i in range(3)
                                                for q in ("entropy_bits", "in_block_mass")])
    assert seen == [("metrics", 4, train), ("checkpoint", 5, []), ("metrics", 8, train), ("checkpoint", 10, evals),
                    ("metrics", 12, train), ("checkpoint", 15, []), ("metrics", 16, train)]
    assert sorted(trainer.metrics) == sorted(train + evals)
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert trainer.metrics["eval_loss"] == steps[steps.split == "eval"].loss.iloc[-1]
    assert (tmp_path / "trial.parquet").exists()


def test_nan_loss_stops_as_diverged(tiny_config, tmp_path, monkeypatch):
    """Losses are read at logging time (no wait for the device every step): a NaN at step 7 is
    noticed at the next log (step 10, log_every 10), recorded at step 7, and the trial stops."""
    monkeypatch.setenv("LOCALIST_FAULT", "nan@7")
    result = run_trial(tiny_config(), str(tmp_path), log=lambda *_: None)
    assert result.status == "diverged" and math.isnan(result.eval_loss)
    row = pd.read_parquet(tmp_path / "trial.parquet").iloc[0]
    assert row.status == "diverged" and row.final_step == 10 and math.isnan(row.eval_ppl)
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    train = steps[steps.split == "train"]
    assert list(train.step) == [7] and math.isnan(train.loss.iloc[0])  # the first bad step, nothing after


def test_penalty_and_window_trials_run(tiny_config, tmp_path):
    for name, loc in {"penalty": {"peak": 1.0, "mechanism": "penalty", "penalty_weight": 2.0},
                      "window": {"peak": 1.0, "partition": "window", "window": 8}}.items():
        res = run_trial(tiny_config(locality=loc, train={"steps": 6, "eval_every": 6}), str(tmp_path / name),
                        log=lambda *_: None)
        assert res.status == "completed" and math.isfinite(res.eval_loss)
    window = layers(tmp_path / "window")
    assert window.loc[2, "in_block_mass"] > 0.999


def test_position_losses_match_a_direct_recomputation(tiny_config, tmp_path):
    """eval_loss_pos* recomputed here from the model's logits (one forward over every held-out
    sequence) and block ids walked token by token, for semantic blocks and the window band."""
    import numpy as np
    import torch

    for name, loc in {"semantic": {"peak": 1.0, "power": 5}, "window": {"peak": 1.0, "partition": "window",
                                                                       "window": 6}}.items():
        cfg = tiny_config(locality=loc, train={"steps": 3, "batch_size": 5})  # 16 sequences: a short last batch
        tr = Trainer(cfg, str(tmp_path / name), name, log=lambda *_: None)
        for _ in range(3):
            tr.train_step()
            tr.step += 1
        loss = tr.evaluate()
        n = cfg.data.eval_sequences
        seqs = torch.from_numpy(np.asarray(tr.data.eval[:n], dtype=np.int64))
        blocks = tr.data.blocks("eval", cfg.locality)[:n]
        tr.model.eval()
        with torch.no_grad():
            logits = tr.model(input_ids=seqs[:, :-1], locality=tr._context(torch.from_numpy(blocks))).logits
        nll = -torch.log_softmax(logits.double(), -1).gather(-1, seqs[:, 1:, None])[..., 0].numpy()
        sums = {"eval_loss_pos1": [0.0, 0], "eval_loss_pos2_4": [0.0, 0], "eval_loss_pos5p": [0.0, 0]}
        for b in range(n):
            for i in range(nll.shape[1]):
                if name == "window":
                    pos = min(i, 6 - 1)
                else:
                    j = i
                    while j > 0 and blocks[b, j - 1] == blocks[b, i]:
                        j -= 1
                    pos = i - j
                key = "eval_loss_pos1" if pos == 0 else "eval_loss_pos2_4" if pos <= 3 else "eval_loss_pos5p"
                sums[key][0] += nll[b, i]
                sums[key][1] += 1
        assert all(c > 0 for _, c in sums.values())
        for key, (total, count) in sums.items():
            assert tr.eval_positions[key] == pytest.approx(total / count, rel=1e-5), (name, key)
        assert loss == pytest.approx(nll.mean(), rel=1e-5)
        if name == "window":  # only the first token of each sequence has no earlier key in its band
            assert sums["eval_loss_pos1"][1] == n


def test_local_pretrained_model_and_its_tokenizer(tiny_config, tmp_path):
    """The hub code path (from_pretrained + the model's own tokenizer) on a model saved here."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from localist.data import _kjv

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([_kjv()[:100_000]], vocab_size=600, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    model_dir = tmp_path / "my-gpt2"
    tok.save_pretrained(model_dir)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2)
                    ).save_pretrained(model_dir)
    cfg = tiny_config(model={"name": str(model_dir)}, locality={"peak": 1.0},
                      train={"steps": 4, "eval_every": 4})
    trainer = Trainer(cfg, str(tmp_path / "out"), log=lambda *_: None)
    assert trainer.n_layer == 2 and trainer.model.config._attn_implementation == "localist"
    assert trainer.data.vocab_size == len(tok)
    result = trainer.fit()
    assert result.status == "completed"
    assert layers(tmp_path / "out").loc[1, "in_block_mass"] > 0.999


def test_second_load_uses_the_cache(tiny_config):
    from localist.data import prepare

    cfg = tiny_config()
    prepare(cfg.data, "tiny", log=lambda *_: None)
    again = prepare(cfg.data, "tiny", log=lambda *_: None)
    assert again.cached and again.train.shape[1] == cfg.data.seq_len + 1


def test_compiled_trial_trains_like_the_eager_one(tiny_config, tmp_path):
    """train.compile=true on CPU (inductor): the loss really goes through the compiled function,
    trains the same model as eager, never recompiles after step 1, and says so in trial.parquet."""
    import torch

    from localist.config_files import build
    from tests.conftest import tiny_tree

    short = {"steps": 4, "eval_every": 4, "log_every": 2}
    eager = run_trial(tiny_config(train=short, locality={"peak": 1.0}), str(tmp_path / "eager"), log=lambda *_: None)
    cfg = tiny_config(train={**short, "compile": True}, locality={"peak": 1.0})
    trainer = Trainer(cfg, str(tmp_path / "compiled"), log=lambda *_: None)
    assert trainer.compiled and trainer._forward is not trainer._forward_loss
    assert isinstance(trainer.model, torch.nn.Module) and not hasattr(trainer.model, "_orig_mod")  # eval: eager
    result = trainer.fit()
    assert result.status == "completed"
    assert result.eval_loss == pytest.approx(eager.eval_loss, rel=1e-3)
    row = pd.read_parquet(tmp_path / "compiled" / "trial.parquet").iloc[0]
    assert bool(row.compiled) and row.recompiles == 0 and pd.isna(row.mfu) and row["train.compile"] == "true"
    assert not pd.read_parquet(tmp_path / "eager" / "trial.parquet").iloc[0].compiled  # auto on CPU: off
    assert build(tiny_tree(train={"compile": False}), "t").train.compile == "false"  # old booleans still read


def test_chunked_cross_entropy_is_exact():
    import torch
    import torch.nn.functional as F

    from localist.loss import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 16, generator=g, requires_grad=True)
    w = torch.randn(500, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 500, (300,), generator=g)
    ref = F.cross_entropy((h @ w.t()).float(), y)
    ref_grads = torch.autograd.grad(3 * ref, (h, w))
    got = linear_cross_entropy(h, w, y, chunk_elements=64 * 500)  # 5 chunks, the last one short
    grads = torch.autograd.grad(3 * got, (h, w))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max() < 1e-6
    with torch.no_grad():
        assert linear_cross_entropy(h, w, y).item() == pytest.approx(ref.item(), rel=1e-6)
