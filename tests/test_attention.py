"""The localist attention against stock GPT-2: equality at lambda 0, causality, block masses."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from localist.attention import LocalityContext, register

T = 24
BLOCKS = torch.tensor([[0] * 5 + [1] * 9 + [2] * 4 + [3] * 6, [0] * 12 + [1] * 12])


def make_model(attn="eager", n_layer=3, seed=0):
    register()
    cfg = GPT2Config(vocab_size=97, n_positions=T, n_embd=32, n_layer=n_layer, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.set_attn_implementation(attn)
    return model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(1))


def run(model, ids, lambdas, **kw):
    ctx = LocalityContext(lambdas=lambdas, block=BLOCKS, **kw)
    with torch.no_grad():
        return model(input_ids=ids, locality=ctx).logits, ctx


@pytest.mark.parametrize("stock", ["eager", "sdpa"])
@pytest.mark.parametrize("stats", [False, True])
def test_lambda_zero_is_stock_gpt2(ids, stock, stats):
    ref = make_model(stock)(ids).logits
    model = make_model("localist")
    out, _ = run(model, ids, [0.0] * 3, collect_stats=stats)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("kw", [{}, {"collect_stats": True}, {"window": 5}, {"mechanism": "penalty"}])
def test_causal(ids, kw):
    """Changing token t+1 never changes logits at positions <= t."""
    model = make_model("localist")
    lambdas = [0.0, 0.5, 1.0]
    base, _ = run(model, ids, lambdas, **kw)
    for t in (0, 7, 15, T - 2):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 97
        out, _ = run(model, changed, lambdas, **kw)
        assert (out[:, : t + 1] - base[:, : t + 1]).abs().max() < 1e-5
        assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4


def test_hard_locality_removes_out_of_block_mass(ids):
    _, ctx = run(make_model("localist"), ids, [1.0, 1.0, 1.0], collect_stats=True)
    for layer in range(3):
        assert 1.0 - ctx.stats[layer].means()["in_block_mass"] < 1e-6


def test_in_block_mass_rises_strictly_with_lambda(ids):
    model = make_model("localist", n_layer=1)
    masses = []
    for lam in (0.0, 0.25, 0.5, 0.75, 0.95, 1.0):
        _, ctx = run(model, ids, [lam], collect_stats=True)
        masses.append(ctx.stats[0].means()["in_block_mass"])
    assert all(b > a for a, b in zip(masses, masses[1:])), masses


def test_bias_touches_only_cross_block_pairs():
    ctx = LocalityContext(lambdas=[0.5], block=BLOCKS)
    mask = ctx.mask(0.5, T, "cpu", torch.float32)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same = BLOCKS[:, :, None] == BLOCKS[:, None, :]
    assert (mask[:, 0][same & causal] == 0).all()
    assert torch.allclose(mask[:, 0][~same & causal], torch.tensor(math.log(0.5)))
    assert torch.isneginf(mask[:, 0][~causal.expand_as(same)]).all()
    hard = ctx.mask(1.0, T, "cpu", torch.float32)
    assert hard.dtype == torch.bool and torch.equal(hard[:, 0], same & causal)


def test_fast_path_matches_explicit_path(ids):
    model = make_model("localist")
    lambdas = [0.0, 0.3, 1.0]
    fast, _ = run(model, ids, lambdas)
    explicit, ctx = run(model, ids, lambdas, collect_stats=True, sample_layers=(0, 2))
    assert (fast - explicit).abs().max() < 1e-5
    sample = ctx.samples[2]
    assert sample.shape == (T, T) and torch.allclose(sample.sum(-1), torch.ones(T), atol=1e-5)


def test_entropy_statistics_on_uniform_attention():
    """With zero weights every query attends uniformly: entropy = log2(visible keys), norm = 1."""
    model = make_model("localist", n_layer=1)
    for p in model.transformer.h[0].attn.c_attn.parameters():
        torch.nn.init.zeros_(p)
    ids = torch.zeros(1, T, dtype=torch.long)
    ctx = LocalityContext(lambdas=[0.0], block=BLOCKS[:1], collect_stats=True)
    with torch.no_grad():
        model(input_ids=ids, locality=ctx)
    m = ctx.stats[0].means()
    expected = sum(math.log2(k) for k in range(2, T + 1)) / (T - 1)
    assert m["entropy_bits"] == pytest.approx(expected, rel=1e-5)
    assert m["entropy_norm"] == pytest.approx(1.0, rel=1e-5)


def test_penalty_leaves_logits_and_adds_loss_term(ids):
    model = make_model("localist").train()
    ref = make_model("sdpa").train()(ids).logits
    ctx = LocalityContext(lambdas=[0.0, 0.5, 1.0], block=BLOCKS, mechanism="penalty")
    out = model(input_ids=ids, locality=ctx).logits
    assert (out - ref).abs().max() < 1e-5
    assert len(ctx.penalty_terms) == 2 and all(t > 0 for t in ctx.penalty_terms)
    torch.stack(ctx.penalty_terms).sum().backward()
    assert model.transformer.h[2].attn.c_attn.weight.grad.abs().sum() > 0


def test_bf16_hard_locality_has_no_nan(ids):
    model = make_model("localist").to(torch.bfloat16)
    for kw in ({}, {"collect_stats": True}):
        out, _ = run(model, ids, [1.0, 1.0, 1.0], **kw)
        assert torch.isfinite(out).all()


def test_entropy_counts_only_attendable_keys_in_hard_layers():
    """At lambda 1 a query attends within its block only: uniform attention there is
    normalised entropy 1, and block-start queries (one key) are left out of the entropy."""
    model = make_model("localist", n_layer=1)
    for p in model.transformer.h[0].attn.c_attn.parameters():
        torch.nn.init.zeros_(p)
    blocks = torch.tensor([[0] * 4 + [1] * 4])
    ctx = LocalityContext(lambdas=[1.0], block=blocks, collect_stats=True)
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 8, dtype=torch.long), locality=ctx)
    m = ctx.stats[0].means()
    assert m["entropy_norm"] == pytest.approx(1.0, rel=1e-5)
    expected_bits = 2 * (math.log2(2) + math.log2(3) + math.log2(4)) / 6
    assert m["entropy_bits"] == pytest.approx(expected_bits, rel=1e-5)
    assert m["in_block_mass"] == pytest.approx(1.0)
