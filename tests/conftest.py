"""Shared fixtures: a per-session tokenised-corpus cache and tiny trial configs."""

from __future__ import annotations

import os

import pytest

from localist.config import QUICK_TRIAL


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    old = os.environ.get("LOCALIST_CACHE")
    os.environ["LOCALIST_CACHE"] = os.environ.get("LOCALIST_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LOCALIST_CACHE", None)
    else:
        os.environ["LOCALIST_CACHE"] = old


TINY = QUICK_TRIAL  # the small trial config the tests share with the benchmarks' --quick runs


def tiny_tree(**sections) -> dict:
    """The TINY trial config with some sections updated: tiny_tree(locality={'peak': 1})."""
    from localist.config_files import deep_merge

    return deep_merge(TINY, sections)


@pytest.fixture
def tiny_config():
    from localist.config_files import build

    def make(**sections):
        return build(tiny_tree(**sections), "test")

    return make
