"""Shared fixtures: a per-session tokenised-corpus cache and tiny trial configs."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    old = os.environ.get("LOCALIST_CACHE")
    os.environ["LOCALIST_CACHE"] = os.environ.get("LOCALIST_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LOCALIST_CACHE", None)
    else:
        os.environ["LOCALIST_CACHE"] = old


TINY = {
    "model": {"name": "tiny", "n_layer": 3, "n_embd": 64, "n_head": 2},
    "data": {"corpus": "kjv", "max_chars": 200_000, "seq_len": 64, "eval_sequences": 16, "vocab_size": 1024},
    "train": {"steps": 20, "batch_size": 4, "lr": 0.003, "warmup_steps": 4, "eval_every": 10, "log_every": 10},
    "locality": {"min_len": 4, "max_len": 16},
}


def tiny_tree(**sections) -> dict:
    """The TINY trial config with some sections updated: tiny_tree(locality={'peak': 1})."""
    from localist.config import deep_merge

    return deep_merge(TINY, sections)


@pytest.fixture
def tiny_config():
    from localist.config import build

    def make(**sections):
        return build(tiny_tree(**sections), "test")

    return make
