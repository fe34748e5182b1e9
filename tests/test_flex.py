"""The CUDA FlexAttention path's masks and score modifications, checked on CPU.

FlexAttention has no CPU backward and is only used on CUDA, but its eager forward runs on CPU,
so the block masks and score modifications it gets are compared here with the SDPA masks of
the CPU path; and the CPU path is checked never to enter it.
"""

import math
import warnings

import pytest
import torch

from localist import attention, flex
from localist.attention import LocalityContext

pytestmark = pytest.mark.skipif(not flex.available(), reason="this torch has no FlexAttention")

B, H, T, D = 2, 3, 40, 16
BLOCKS = torch.tensor([[0] * 7 + [1] * 13 + [2] * 5 + [3] * 15, [0] * 20 + [1] * 20])


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, T, D, generator=g) for _ in range(3))


def sdpa_reference(ctx, lam, q, k, v, scale):
    mask = ctx.mask(lam, T, q.device, q.dtype, boolean_hard=lam >= 1.0)
    return attention._sdpa(q, k, v, mask, 0.0, scale, False)


@pytest.mark.parametrize("lam", [1 / 6, 0.5, 5 / 6, 1.0])
@pytest.mark.parametrize("partition", [{"block": BLOCKS}, {"window": 6}])
def test_flex_matches_sdpa_masks(qkv, lam, partition):
    q, k, v = qkv
    scale = 1 / math.sqrt(D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is unfused
        with torch.no_grad():
            out = flex.attention(LocalityContext(lambdas=[lam], **partition), lam, q, k, v, scale, backend=None)
    ref = sdpa_reference(LocalityContext(lambdas=[lam], **partition), lam, q, k, v, scale)
    assert out.shape == ref.shape == (B, T, H, D)
    assert (out - ref).abs().max() < 1e-5


def test_masks_built_once_per_batch_and_shared():
    ctx = LocalityContext(lambdas=[0.5, 0.5, 1.0, 1.0], block=BLOCKS)
    hard = flex.block_mask(ctx, T, "cpu", hard=True)
    assert flex.block_mask(ctx, T, "cpu", hard=True) is hard
    assert flex.block_mask(ctx, T, "cpu", hard=False) is flex.block_mask(ctx, T, "cpu", hard=False)
    assert flex.score_mod(ctx, 0.5, "cpu") is flex.score_mod(ctx, 0.5, "cpu")
    assert flex.score_mod(ctx, 0.25, "cpu") is not flex.score_mod(ctx, 0.5, "cpu")
    # semantic blocks differ per sequence: one mask per batch element; a window needs no batch axis
    assert hard.shape[0] == B
    assert flex.block_mask(LocalityContext(lambdas=[1.0], window=4), T, "cpu", hard=True).shape[0] == 1


def test_hard_block_mask_skips_tiles():
    """Blocks of at most 64 tokens at seq 1024: the hard mask keeps few of the causal tiles."""
    seq = 1024
    blocks = (torch.arange(seq) // 48)[None]
    ctx = LocalityContext(lambdas=[1.0], block=blocks)
    hard = flex.block_mask(ctx, seq, "cpu", hard=True)
    causal = flex.block_mask(ctx, seq, "cpu", hard=False)
    assert hard.sparsity() > causal.sparsity() + 30  # percent of tiles skipped


def test_cpu_never_takes_the_flex_path(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("FlexAttention called on CPU")

    monkeypatch.setattr(flex, "attention", boom)
    q = torch.randn(B, H, T, D)
    assert not flex.usable(q, 0.0)
    from tests.test_attention import make_model

    model = make_model("localist")
    ids = torch.randint(0, 97, (2, 24))
    ctx = LocalityContext(lambdas=[0.0, 0.5, 1.0], block=BLOCKS[:, :24])
    with torch.no_grad():
        model(input_ids=ids, locality=ctx)


def test_usable_only_on_cuda_without_dropout(monkeypatch):
    class FakeCuda:
        is_cuda = True

    assert flex.usable(FakeCuda(), 0.0) == flex.enabled()
    assert not flex.usable(FakeCuda(), 0.1)
    flex.set_enabled(False)
    try:
        assert not flex.usable(FakeCuda(), 0.0)
    finally:
        flex.set_enabled(True)


def test_failure_falls_back_once_with_a_warning(monkeypatch, qkv):
    def broken(*a, **k):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(flex, "attention", broken)
    q, k, v = qkv
    try:
        with pytest.warns(RuntimeWarning, match="FlexAttention failed"):
            assert flex.try_attention(LocalityContext(lambdas=[1.0], block=BLOCKS), 1.0, q, k, v, None) is None
        assert not flex.enabled()
    finally:
        flex.set_enabled(True)
    assert flex.enabled()


def test_compiled_flex_compiles_once_per_kind():
    """The compiled kernel and compiled create_block_mask on CPU over batches with different block
    layouts and lambdas: after the first soft and the first hard call (and the first window call)
    dynamo compiles nothing more. Backend aot_eager: dynamo's guards, which decide recompiles, are
    the same for every backend, and inductor's CPU kernels take minutes to build on 2 cores."""
    from localist.speed import dynamo_frames

    g = torch.Generator().manual_seed(1)
    scale = 1 / math.sqrt(D)

    def batch(partition):
        q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
        if partition == "window":
            return q, k, v, {"window": int(torch.randint(3, 9, (), generator=g))}
        starts = torch.rand(B, T, generator=g) < 0.2
        return q, k, v, {"block": starts.long().cumsum(-1)}

    def run(partition, lams):
        q, k, v, part = batch(partition)
        ctx = LocalityContext(lambdas=list(lams), **part)
        flex.prepare(ctx, T, "cpu", backend="aot_eager")
        with torch.no_grad():
            for lam in lams:
                out = flex.attention(ctx, lam, q, k, v, scale, backend="aot_eager")
                ref = sdpa_reference(LocalityContext(lambdas=[lam], **part), lam, q, k, v, scale)
                assert (out - ref).abs().max() < 1e-5

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for partition in ("semantic", "window"):
            run(partition, [0.5])  # first soft call
            run(partition, [1.0])  # first hard call
            warm = dynamo_frames()
            for lams in ([1 / 6, 1.0], [1.0, 5 / 6, 0.25], [0.5]):
                run(partition, lams)
            assert dynamo_frames() == warm, f"{partition}: recompiled after warm-up"
