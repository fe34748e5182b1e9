"""The maths of schedules and block partitioners, including property-based checks."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from localist.blocks import in_block, semantic_blocks, sentence_blocks, sentence_starts, token_boundaries
from localist.config import LocalityConfig
from localist.schedules import layer_lambdas, polynomial, uniform


@pytest.mark.parametrize("power", [1, 2, 3, 4, 5])
def test_polynomial_values(power):
    lam = polynomial(6, 0.8, power)
    expected = [0.8 * (l / 5) ** power for l in range(6)]
    assert lam == pytest.approx(expected, abs=1e-12)
    assert lam[0] == 0.0 and lam[-1] == pytest.approx(0.8)


def test_uniform_and_list_and_steepness():
    assert uniform(4, 0.5) == [0.5] * 4
    cfg = LocalityConfig(schedule="list", lambdas=[0, 0.1, 0.9])
    assert layer_lambdas(cfg, 3) == [0, 0.1, 0.9]
    with pytest.raises(ValueError, match="locality.lambdas"):
        layer_lambdas(cfg, 4)
    # steeper schedules keep early layers more distributed
    quintic, linear = polynomial(12, 1, 5), polynomial(12, 1, 1)
    assert all(q <= l for q, l in zip(quintic, linear)) and quintic[6] < 0.05 < linear[6]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 48), peak=st.floats(0, 1), power=st.floats(0, 8))
def test_polynomial_bounded_and_monotone(n, peak, power):
    lam = polynomial(n, peak, power)
    assert len(lam) == n and all(0.0 <= x <= peak + 1e-12 for x in lam)
    assert all(b >= a for a, b in zip(lam, lam[1:]))


@st.composite
def boundaries(draw):
    min_len = draw(st.integers(1, 16))
    max_len = draw(st.integers(max(2, 2 * min_len - 1), 80))
    n = draw(st.integers(1, 300))
    flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return np.array(flags), min_len, max_len


@settings(max_examples=300, deadline=None)
@given(boundaries())
def test_semantic_blocks_partition_within_bounds(case):
    flags, min_len, max_len = case
    ids = semantic_blocks(flags, min_len, max_len)
    assert len(ids) == len(flags)
    assert ids[0] == 0 and set(np.diff(ids)) <= {0, 1}  # every token in exactly one contiguous block
    lengths = np.bincount(ids)
    assert (lengths <= max_len).all()
    assert (lengths[:-1] >= min_len).all()  # only the block the sequence end cuts off may be short
    starts = np.flatnonzero(np.diff(ids)) + 1
    # a cut falls on a sentence start unless the block reached max_len
    assert all(flags[c] or np.sum(ids == ids[c - 1]) == max_len for c in starts)


@settings(max_examples=300, deadline=None)
@given(boundaries(), st.data())
def test_semantic_blocks_are_causal(case, data):
    """Which earlier keys share a block with query t depends only on text up to t: changing
    sentence starts after t never changes the block structure of positions <= t."""
    flags, min_len, max_len = case
    n = len(flags)
    t = data.draw(st.integers(0, n - 1))
    other = flags.copy()
    other[t + 1:] = data.draw(st.lists(st.booleans(), min_size=n - t - 1, max_size=n - t - 1))
    a, b = semantic_blocks(flags, min_len, max_len), semantic_blocks(other, min_len, max_len)
    same_a = a[: t + 1, None] == a[None, : t + 1]
    same_b = b[: t + 1, None] == b[None, : t + 1]
    assert (same_a == same_b).all()


def test_sentence_starts_and_token_mapping():
    text = 'In the beginning. "And then?" he said! End\n\nNew paragraph here'
    starts = sentence_starts(text)
    assert [text[i:i + 3] for i in starts] == ['"An', "he ", "End", "New"]
    tokens = np.array([0, 3, 7, 17, 18, 22, 30, 33, 38, 42, 44])
    flags = token_boundaries(tokens, starts)
    assert list(np.flatnonzero(flags)) == [4, 6, 8, 10]  # token 8 (' End') holds the start at 39
    assert list(sentence_blocks(flags)) == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4]


def test_window_band():
    band = in_block(None, 6, window=2)[0, 0]
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(band, (i - j) < 2)


def test_block_ids_are_cached_beside_the_corpus(tiny_config):
    """Each partitioner's block ids are found once per corpus cache and loaded by later trials."""
    from pathlib import Path

    from localist.blocks import BLOCK_IDS_VERSION
    from localist.data import _block_ids, prepare

    cfg = tiny_config(locality={"min_len": 3, "max_len": 9})
    ds = prepare(cfg.data, "tiny", log=lambda *a: None)
    folder = Path(ds.tokenizer_path).parent
    f = folder / f"blocks-v{BLOCK_IDS_VERSION}-train-semantic-3-9.npy"
    f.unlink(missing_ok=True)
    first = ds.blocks("train", cfg.locality)
    assert f.exists() and np.array_equal(first, _block_ids(ds.train_starts, cfg.locality))
    assert np.array_equal(prepare(cfg.data, "tiny", log=lambda *a: None).blocks("train", cfg.locality), first)
    f.write_bytes(b"cut short")  # a file cut short is computed again, not trusted
    assert np.array_equal(ds.blocks("train", cfg.locality), first)
