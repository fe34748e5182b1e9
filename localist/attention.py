"""Localist self-attention for stock transformers models, through the v5 attention interface.

The model's forward is called with ``locality=LocalityContext(...)``; transformers passes that
keyword down to every attention layer, which looks up its own lambda by ``module.layer_idx``.
Without a context the function is plain causal SDPA, so a localist model is still a normal
GPT-2 for generation or any other use.

Each layer takes one of five paths (``PATHS``; a trainer decides them once per trial in
``localist.compute`` and passes them in the context, so nothing is decided inside a compiled
step): lambda 0 uses SDPA's own causal kernel (``sdpa-causal``); the bias mechanism uses
FlexAttention on CUDA (``flex-hard`` for lambda 1: a block-sparse mask; ``flex-soft``: a score
modification; ``localist.flex``) or else one SDPA call with a mask built once per batch for each
distinct lambda (``sdpa-mask``: boolean block-causal for lambda 1, an additive log(1 - lambda)
bias on cross-block pairs in between). Probabilities are materialised (``explicit``) only when
statistics are collected (evaluation) or the penalty mechanism needs the out-of-block mass.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from localist.blocks import in_block

from localist import flex

NAME = "localist"

SDPA_CAUSAL, SDPA_MASK, FLEX_HARD, FLEX_SOFT, EXPLICIT = "sdpa-causal", "sdpa-mask", "flex-hard", "flex-soft", "explicit"
PATHS = (SDPA_CAUSAL, FLEX_SOFT, FLEX_HARD, SDPA_MASK, EXPLICIT)  # the order descriptions list them
FLEX_PATHS = (FLEX_HARD, FLEX_SOFT)


def layer_paths(lambdas: list[float], mechanism: str, flex_on: bool) -> tuple[str, ...]:
    """The training-step attention path of each layer (evaluation with statistics: ``explicit``)."""
    def one(lam: float) -> str:
        if lam == 0.0:
            return SDPA_CAUSAL
        if mechanism == "penalty":
            return EXPLICIT
        return (FLEX_HARD if lam >= 1.0 else FLEX_SOFT) if flex_on else SDPA_MASK
    return tuple(one(lam) for lam in lambdas)


def describe_paths(paths) -> str:
    """('sdpa-causal', 'flex-soft', 'flex-soft', 'flex-hard') -> 'sdpa-causal x1, flex-soft x2, flex-hard x1'."""
    counts = Counter(paths)
    return ", ".join(f"{p} x{counts[p]}" for p in PATHS if counts[p])


@dataclass
class LayerStats:
    """Running sums for one layer; means are taken at the end, never over stored maps."""

    entropy_bits: float = 0.0
    entropy_norm: float = 0.0
    count: int = 0  # (query, head) pairs with at least two attendable keys
    in_block_mass: float = 0.0
    mass_count: int = 0  # (query, head) pairs past position 0, the same rows in every layer

    def means(self) -> dict[str, float]:
        n, m = max(self.count, 1), max(self.mass_count, 1)
        return {"entropy_bits": self.entropy_bits / n, "entropy_norm": self.entropy_norm / n,
                "in_block_mass": self.in_block_mass / m}


@dataclass
class LocalityContext:
    """Everything the attention layers need for one forward pass."""

    lambdas: list[float]
    block: torch.Tensor | None = None  # (B, T) block ids; None for the window partitioner
    window: int | None = None
    mechanism: str = "bias"
    collect_stats: bool = False
    sample_layers: tuple[int, ...] = ()  # layers whose head-mean map of sequence 0 is kept
    sample_len: int = 64
    stats: dict[int, LayerStats] = field(default_factory=dict)
    samples: dict[int, torch.Tensor] = field(default_factory=dict)
    penalty_terms: list[torch.Tensor] = field(default_factory=list)
    paths: tuple[str, ...] | None = None  # each layer's training path (localist.compute.Plan); None: decided per call
    flex_backend: str | None = "inductor"  # how FlexAttention kernels compile when called outside a compiled step
    _masks: dict = field(default_factory=dict, repr=False)

    def lam(self, layer: int) -> float:
        return self.lambdas[layer]

    def path(self, layer: int, query: torch.Tensor, dropout: float, training: bool) -> str:
        lam = self.lambdas[layer]
        if self.collect_stats or (self.mechanism == "penalty" and lam > 0 and training):
            return EXPLICIT
        if self.paths is not None:
            return SDPA_CAUSAL if self.paths[layer] == EXPLICIT else self.paths[layer]
        return layer_paths([lam], self.mechanism, flex.usable(query, dropout))[0]

    def cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        """``build()`` once per batch under ``key``: masks shared by every layer that needs them."""
        if key not in self._masks:
            self._masks[key] = build()
        return self._masks[key]

    def in_block(self, T: int, device) -> torch.Tensor:
        block = None if self.window is not None else self.block
        return self.cached(("inblock", T, str(device)),
                           lambda: in_block(None if block is None else block.to(device), T, self.window, device))

    def mask(self, lam: float, T: int, device, dtype, boolean_hard: bool = True) -> torch.Tensor:
        """SDPA mask for one lambda, built once per batch and shared by all layers with that lambda.

        Lambda 1 gives a boolean block-causal mask (SDPA's efficient masked kernels) unless an
        additive one is asked for; otherwise 0 in block, log(1 - lambda) across, -inf above the
        diagonal.
        """
        hard = lam >= 1.0 and boolean_hard

        def build() -> torch.Tensor:
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            allowed = causal & self.in_block(T, device)
            if hard:
                return allowed
            bias = torch.full((), math.log1p(-lam) if lam < 1.0 else float("-inf"), dtype=dtype, device=device)
            zero = torch.zeros((), dtype=dtype, device=device)
            ninf = torch.full((), float("-inf"), dtype=dtype, device=device)
            return torch.where(causal, torch.where(allowed, zero, bias), ninf)
        return self.cached(("mask", lam, T, str(device), None if hard else dtype), build)


def _sdpa(query, key, value, mask, dropout, scaling, causal):
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                         is_causal=causal and mask is None, scale=scaling)
    return out.transpose(1, 2).contiguous()


def _explicit(module, ctx: LocalityContext, lam: float, query, key, value, dropout, scaling):
    """Attention with the probabilities in hand: statistics and/or the penalty term."""
    T = query.shape[-2]
    layer = module.layer_idx
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    causal = torch.ones(T, T, dtype=torch.bool, device=query.device).tril()
    inblock = ctx.in_block(T, query.device)
    if ctx.mechanism == "bias" and lam > 0:
        scores = scores + ctx.mask(lam, T, query.device, torch.float32, boolean_hard=False)
    else:
        scores = scores.masked_fill(~causal, float("-inf"))
    probs = scores.softmax(dim=-1)
    out_block = (probs * (causal & ~inblock)).sum(-1)  # (B, H, T)
    if ctx.mechanism == "penalty" and lam > 0 and module.training:
        ctx.penalty_terms.append(lam * out_block.mean())
    if ctx.collect_stats:
        with torch.no_grad():
            entropy = -torch.special.xlogy(probs, probs).sum(-1) / math.log(2)  # bits, (B, H, T)
            # Keys a query can attend to: all causal ones, except in a hard (lambda 1) layer,
            # where only its own block's. A query that sees one key has no choice to measure.
            allowed = causal & inblock if (ctx.mechanism == "bias" and lam >= 1.0) else causal[None, None]
            visible = allowed.sum(-1, dtype=torch.float32).expand(probs.shape[0], -1, -1)  # (B, 1, T)
            rows = (visible >= 2).expand_as(entropy)
            norm = entropy / torch.log2(visible.clamp(min=2))
            st = ctx.stats.setdefault(layer, LayerStats())
            st.entropy_bits += float(entropy[rows].sum())
            st.entropy_norm += float(norm[rows].sum())
            st.count += int(rows.sum())
            st.in_block_mass += float((1.0 - out_block)[..., 1:].sum())
            st.mass_count += out_block[..., 1:].numel()
            if layer in ctx.sample_layers:
                S = min(ctx.sample_len, T)
                ctx.samples[layer] = probs[0, :, :S, :S].mean(0).cpu()
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous()


def localist_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: float | None = None, **kwargs):
    ctx: LocalityContext | None = kwargs.get("locality")
    q_len, k_len = query.shape[-2], key.shape[-2]
    if ctx is None or q_len != k_len:  # plain use (generation with a cache, no locality)
        causal = attention_mask is None and q_len > 1
        return _sdpa(query, key, value, attention_mask, dropout, scaling, causal), None
    lam = ctx.lam(module.layer_idx)
    path = ctx.path(module.layer_idx, query, dropout, module.training)
    if path == EXPLICIT:
        return _explicit(module, ctx, lam, query, key, value, dropout, scaling), None
    if path == SDPA_CAUSAL:
        return _sdpa(query, key, value, None, dropout, scaling, True), None
    if path in FLEX_PATHS:
        if ctx.paths is not None:  # planned: a failure is the trainer's to handle, outside the step
            return flex.attention(ctx, lam, query, key, value, scaling, ctx.flex_backend), None
        out = flex.try_attention(ctx, lam, query, key, value, scaling)  # unplanned eager use: SDPA if it fails
        if out is not None:
            return out, None
    mask = ctx.mask(lam, q_len, query.device, query.dtype)
    return _sdpa(query, key, value, mask, dropout, scaling, False), None


def register() -> None:
    """Make 'localist' a valid attn_implementation in this process (needed in every Ray worker)."""
    AttentionInterface.register(NAME, localist_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
