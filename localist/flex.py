"""FlexAttention path of the localist attention, used on CUDA only.

``torch.nn.attention.flex_attention`` runs the bias mechanism's training-time attention as one
fused kernel that skips every tile the mask rules out:

- a hard layer (lambda = 1) gets a block-sparse ``BlockMask`` of causal & in-block pairs, so
  with semantic blocks of at most ``max_len`` tokens almost all of the T x T tiles are skipped;
- a soft layer (0 < lambda < 1) gets the causal ``BlockMask`` plus a ``score_mod`` that adds
  log(1 - lambda) to out-of-block logits.

Both are built once per batch and kept in the batch's ``LocalityContext`` (like the SDPA masks),
so every layer with the same lambda shares them. The bias is captured as a tensor, not a Python
float, so layers with different lambdas reuse one compiled kernel instead of recompiling.

Lambda 0 and the penalty mechanism stay on SDPA's causal (flash) kernel, and statistics or
penalty terms need the explicit probabilities, so this path is only the bias fast path. It is
taken when the query is on a CUDA device, FlexAttention imports, attention dropout is off and
``LOCALIST_FLEX`` is not ``0``. FlexAttention has no CPU backward, and without ``torch.compile``
it materialises the full score matrix, so CPU training never comes here (the CPU path in
``localist.attention`` is unchanged); the CPU tests call :func:`attention` with
``compiled=False`` in inference to check the masks against SDPA.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as _flex_attention
except ImportError:  # pragma: no cover - older torch
    create_block_mask = _flex_attention = None

_state = {"enabled": os.environ.get("LOCALIST_FLEX", "1").strip().lower() not in ("0", "false", "no", "off"),
          "failed": None, "kernel": None}


def available() -> bool:
    """FlexAttention can be imported in this torch build."""
    return _flex_attention is not None


def set_enabled(on: bool) -> None:
    """Switch the CUDA FlexAttention path on or off in this process (benchmarks compare both)."""
    _state["enabled"] = bool(on)
    _state["failed"] = None


def enabled() -> bool:
    return available() and _state["enabled"] and _state["failed"] is None


def failure() -> str | None:
    """Why the path was switched off in this process (after a failed call), else None."""
    return _state["failed"]


def usable(query: torch.Tensor, dropout: float) -> bool:
    """Whether this attention call may take the FlexAttention path."""
    return query.is_cuda and dropout == 0.0 and enabled()


def _kernel():
    if _state["kernel"] is None:
        # Compiled once per process; eager FlexAttention would materialise the scores.
        _state["kernel"] = torch.compile(_flex_attention, dynamic=False)
    return _state["kernel"]


def _in_block(ctx, device):
    """(b, h, q, kv) -> True where key kv lies in query q's block (the partitioner's rule)."""
    if ctx.window is not None:
        w = ctx.window

        def in_block(b, h, q, kv):
            return q - kv < w
    else:
        blocks = ctx.block.to(device)

        def in_block(b, h, q, kv):
            return blocks[b, q] == blocks[b, kv]
    return in_block


def block_mask(ctx, T: int, device, hard: bool):
    """The batch's BlockMask: causal & in-block (hard) or causal only (soft), built once."""
    key = ("flex-mask", hard, T, str(device))
    if key not in ctx._masks:
        if hard:
            in_block = _in_block(ctx, device)

            def mask_mod(b, h, q, kv):
                return (kv <= q) & in_block(b, h, q, kv)
            batch = None if ctx.window is not None else ctx.block.shape[0]
        else:
            def mask_mod(b, h, q, kv):
                return kv <= q
            batch = None
        ctx._masks[key] = create_block_mask(mask_mod, batch, None, T, T, device=device)
    return ctx._masks[key]


def score_mod(ctx, lam: float, device):
    """Adds log(1 - lambda) to out-of-block logits; one function per lambda and batch."""
    key = ("flex-score", lam, str(device))
    if key not in ctx._masks:
        in_block = _in_block(ctx, device)
        bias = torch.tensor(math.log1p(-lam), dtype=torch.float32, device=device)

        def mod(score, b, h, q, kv):
            return torch.where(in_block(b, h, q, kv), score, score + bias)
        ctx._masks[key] = mod
    return ctx._masks[key]


def attention(ctx, lam: float, query, key, value, scaling: float | None, compiled: bool = True) -> torch.Tensor:
    """Bias-mechanism attention for 0 < lambda <= 1; returns (B, T, H, D) like the SDPA path."""
    T = query.shape[-2]
    hard = lam >= 1.0
    mask = block_mask(ctx, T, query.device, hard)
    mod = None if hard else score_mod(ctx, lam, query.device)
    fn = _kernel() if compiled else _flex_attention
    out = fn(query, key, value, score_mod=mod, block_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous()


def try_attention(ctx, lam: float, query, key, value, scaling: float | None) -> torch.Tensor | None:
    """:func:`attention`, or None (after one warning, for the rest of the process) if it fails."""
    try:
        return attention(ctx, lam, query, key, value, scaling)
    except Exception as e:  # a compiler or kernel problem must not kill a trial: SDPA still works
        _state["failed"] = f"{type(e).__name__}: {e}"
        warnings.warn(f"localist: FlexAttention failed ({_state['failed'][:300]}); using SDPA masks instead",
                      RuntimeWarning, stacklevel=2)
        return None
