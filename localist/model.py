"""Stock transformers causal LMs with the localist attention selected - no forked model code."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from localist.attention import NAME, register
from localist.config import ModelConfig


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int, seed: int) -> PreTrainedModel:
    """'tiny': a GPT-2 built from the config (seeded init); anything else: from_pretrained.
    Either way attention dropout is ``cfg.attn_dropout`` (FlexAttention has none, see localist.compute)."""
    register()
    if cfg.name == "tiny":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=seq_len, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attn_dropout,
            bos_token_id=0, eos_token_id=0,
        )
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        model.set_attn_implementation(NAME)
    else:
        config = AutoConfig.from_pretrained(cfg.name)
        for key in ATTN_DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, cfg.attn_dropout)
        model = AutoModelForCausalLM.from_pretrained(cfg.name, config=config, attn_implementation=NAME)
        limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        if limit and seq_len > limit:
            raise ValueError(f"data.seq_len: {seq_len} exceeds {cfg.name}'s context of {limit} tokens")
    return model


ATTN_DROPOUT_KEYS = ("attn_pdrop", "attention_dropout")  # GPT-2's name, most other models' name


def attn_dropout(model: PreTrainedModel) -> float:
    """The model's attention dropout probability (0 when its config names none)."""
    return float(next((getattr(model.config, k) for k in ATTN_DROPOUT_KEYS if hasattr(model.config, k)), 0.0) or 0.0)


MODEL_DIR = "model"  # a trial's saved model: OUT/model (trials/<run_id>/model in a sweep)
TRIAL_FILE = "localist_trial.json"  # beside config.json: the trial config and per-layer lambdas


def load_localist(path: str, **kwargs) -> PreTrainedModel:
    """A saved localist model (``train.save_model``), ready to use: registers the localist
    attention in this process, then ``AutoModelForCausalLM.from_pretrained`` with it selected.

    Equivalent by hand: ``localist.attention.register()`` then ``from_pretrained(path,
    attn_implementation="localist")``. Called without ``locality=``, the model is plain causal
    GPT-2; pass ``locality=LocalityContext(lambdas=..., block=...)`` (lambdas are in
    ``localist_trial.json``) to run it with the locality it was trained under.
    """
    register()
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=NAME, **kwargs)


def n_layers(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)
