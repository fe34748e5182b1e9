"""A saved model as a researcher gets it (`localist train --save-model`, a tiny GPT-2 trained for a few
steps, no network): its Hub model card, `localist inspect` and `localist generate`. The card of a sweep's
model (sweep and run named) is checked in test_sweep.py."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from localist.model import MODEL_DIR
from orchestrator.cli import main
from tests.conftest import tiny_tree

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void. "
        "And God said, Let there be light: and there was light. And God saw the light, that it was good.")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from localist.config_files import build
    from localist.saved import SavedModel
    from localist.trainer import run_trial

    out = tmp_path_factory.mktemp("saved") / "one"
    cfg = build(tiny_tree(train={"steps": 8, "eval_every": 8, "log_every": 8, "warmup_steps": 2, "save_model": True}),
                "test")
    assert run_trial(cfg, str(out), log=lambda *_: None).status == "completed"
    folder = out / MODEL_DIR
    return SavedModel.load(str(folder)), folder, pd.read_parquet(out / "trial.parquet").iloc[0]


def test_model_card_is_hub_metadata_and_says_what_the_model_is(saved, monkeypatch):
    from huggingface_hub import ModelCard

    from localist.code_version import git_commit

    model, folder, trial = saved
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = ModelCard.load(folder / "README.md")  # a local file: parsed here, nothing asked of the Hub
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert {"localist", "localist-attention", "gpt2", "schedule-polynomial", "partition-semantic"} <= set(data["tags"])
    assert data["corpus"] == "kjv" and "base_model" not in data and "datasets" not in data  # tiny: from scratch
    assert data["localist"]["lambdas"] == pytest.approx(model.lambdas) and data["localist"]["mechanism"] == "bias"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == pytest.approx({"loss": trial.eval_loss, "perplexity": trial.eval_ppl}, rel=1e-6)
    text = card.text
    assert "quintic polynomial (power 5), peak 1" in text and "semantic blocks" in text
    for layer, lam in enumerate(model.lambdas):
        assert f"| {layer} | {lam:.4f} |" in text
    assert f"| positions 2-4 | {trial.eval_loss_pos2_4:.4f} | {math.exp(trial.eval_loss_pos2_4):.2f} |" in text
    assert "AutoModelForCausalLM.from_pretrained" in text and "localist inspect" in text and "SavedModel.load" in text
    assert "`localist train`, trial id `trial`" in text
    assert f"git commit of the training code: `{git_commit() or 'unknown (no git repository)'}`" in text


def test_blocks_of_a_text_are_the_ones_training_finds(saved):
    """SavedModel.blocks (token texts, as generation needs) equals the training data's path (the
    tokenizer's offsets, localist.data.encode) on a passage of the corpus."""
    from localist.blocks import block_ids, sentence_starts, token_boundaries
    from localist.data import _kjv, encode

    model, _, _ = saved
    text = _kjv()[5000:5600]
    ids, starts = encode(model.tokenizer, text)
    loc = model.config.locality
    want = block_ids(token_boundaries(starts, sentence_starts(text)), loc.partition, loc.min_len, loc.max_len)
    assert model.blocks(ids.tolist()).tolist() == want.tolist()
    assert len(set(want)) > 3


class _Page(HTMLParser):
    """The token spans of inspect.html (position, text, whether a block starts there) and all its text."""

    def __init__(self):
        super().__init__()
        self.tokens, self.text, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "tok" in a.get("class", "").split():
            self._open = {"pos": int(a["data-pos"]), "start": "start" in a["class"].split(), "text": ""}
            self.tokens.append(self._open)

    def handle_endtag(self, tag):
        if tag == "span":
            self._open = None

    def handle_data(self, data):
        self.text.append(data)
        if self._open is not None:
            self._open["text"] += data


def test_inspect_writes_html_naming_every_layer_with_the_texts_block_boundaries(saved, tmp_path, capsys):
    model, folder, _ = saved
    out = tmp_path / "look"
    assert main(["inspect", str(folder), TEXT, "--out", str(out), "--no-locality"]) == 0
    assert "in-block mass by layer" in capsys.readouterr().out
    page = _Page()
    page.feed((out / "inspect.html").read_text())
    assert "".join(t["text"] for t in page.tokens) == TEXT  # every token shown, in order
    # the sentence starts, found here by counting the tokens before each (sentences of 4-16 tokens: one block each)
    sentence_starts = [i + 2 for i in range(len(TEXT) - 2) if TEXT[i] == "." and TEXT[i + 1] == " "]
    want = [0] + [len(model.encode(TEXT[:c - 1])) for c in sentence_starts]
    assert [t["pos"] for t in page.tokens if t["start"]] == want
    text = " ".join(page.text)
    for layer in range(model.n_layer):
        assert f"layer {layer}" in text
    for png in ("attention-layers.png", "attention-layers-no-locality.png"):
        assert (out / png).stat().st_size > 5000 and f'alt="{png}"' in (out / "inspect.html").read_text()

    result = json.loads((out / "inspect.json").read_text())
    assert result["block_starts"] == want and len(result["tokens"]) == len(model.encode(TEXT))
    trained, plain = result["passes"]
    assert trained["locality"] and not plain["locality"]
    assert trained["loss"][0] is None and len(trained["loss"]) == len(result["tokens"])
    assert model.lambdas[-1] == 1.0  # the deepest layer is strictly localist: all its attention in block
    assert trained["layers"][-1]["in_block_mass"] == pytest.approx(1.0, abs=1e-6)
    assert plain["layers"][-1]["in_block_mass"] < 0.9
    assert trained["layers"][0]["in_block_mass"] == pytest.approx(plain["layers"][0]["in_block_mass"])  # lambda 0
    first = want[1]  # inside the first block every key is in block: both passes see the same attention
    assert trained["loss"][1:first] == pytest.approx(plain["loss"][1:first], abs=1e-5)
    assert trained["loss"][first + 1:] != pytest.approx(plain["loss"][first + 1:], abs=1e-5)


def test_inspect_input_errors_exit_2(saved, tmp_path, capsys):
    _, folder, _ = saved
    assert main(["inspect", str(folder), "text", "--file", "x.txt", "--out", str(tmp_path)]) == 2
    assert main(["inspect", str(folder), "--file", str(tmp_path / "missing.txt"), "--out", str(tmp_path)]) == 2
    assert main(["inspect", str(tmp_path), "Some text.", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "one of the two" in err and "missing.txt" in err and "not a saved localist model" in err


def test_generate_applies_the_trained_locality_beside_plain_generation(saved, capsys):
    from localist.generation import both

    model, folder, _ = saved
    prompt = "And God said, Let there be light. And"
    local, plain = both(model, prompt, max_new_tokens=10)
    assert local.locality and not plain.locality and len(local.new_ids) == len(plain.new_ids) == 10
    # with locality: each token is the argmax of a forward pass with the blocks of the text so far, and
    # those blocks only ever extend (the partition is causal)
    blocks = model.blocks(local.ids)
    for n in range(len(local.prompt_ids), len(local.ids)):
        assert model.blocks(local.ids[:n]).tolist() == blocks[:n].tolist()
        assert int(model.forward(local.ids[:n])[0][-1].argmax()) == local.ids[n]
    assert len(set(blocks.tolist())) >= 2
    # plain: what stock transformers' greedy generate gives (with its key/value cache)
    ids = torch.tensor([plain.prompt_ids])
    hf = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0].tolist()
    assert hf == plain.ids
    assert main(["generate", str(folder), "--prompt", prompt, "--max-new-tokens", "10"]) == 0
    out = capsys.readouterr().out
    assert "[generate] with its locality (quintic polynomial (power 5), peak 1):" in out
    assert "[generate] plain causal attention:" in out
    assert prompt + local.text in out and prompt + plain.text in out
    sampled = both(model, prompt, plain=False, max_new_tokens=5, temperature=1.0, top_k=5, seed=3)
    assert len(sampled) == 1 and sampled[0].ids == both(model, prompt, plain=False, max_new_tokens=5,
                                                          temperature=1.0, top_k=5, seed=3)[0].ids
    assert np.all(np.isin(sampled[0].new_ids, np.arange(model.model.config.vocab_size)))
