"""FlexAttention path of the localist attention (bias mechanism, 0 < lambda <= 1), used on CUDA.

``torch.nn.attention.flex_attention`` runs the training-time attention as one fused kernel that
skips every tile its ``BlockMask`` rules out:

- a hard layer (lambda = 1) gets the block-sparse mask of causal & in-block pairs, so with
  semantic blocks of at most ``max_len`` tokens almost all of the T x T tiles are skipped;
- a soft layer (0 < lambda < 1) gets the causal mask, and the ``score_mod`` adds log(1 - lambda)
  to out-of-block logits.

Compiled once per trial, with no decision, compile call or host sync inside the step:

- inside a compiled training step (``torch.compiler.is_compiling()``) the plain
  ``flex_attention`` and ``create_block_mask`` are traced into the step's one graph and compiled
  with it; outside one (an eager step on CUDA), kernels compiled once per process and backend
  are used, built here, never while dynamo traces (a ``torch.compile`` call inside a trace is a
  no-op, and a cache lookup there is a guard);
- the mask and score functions are made by the module-level factories below (fixed code
  objects: dynamo guards a function by its code and the tensors in its closure by dtype, device
  and shape); block ids, the window width, the bias and the hard/soft switch reach them only as
  tensors made on the device by ``torch.full`` (no host-to-device copy, no sync);
- hard and soft layers call the kernel the same way: one mask function (``open_`` = True in soft
  layers lets every causal key through) and always a score function (bias -inf in hard layers,
  where the mask has removed those keys anyway), so they share one compiled kernel;
- the block masks are built once per batch and kept in the batch's ``LocalityContext``, shared by
  every layer (in an eager step ``prepare`` builds them before the model runs);
- a trial's training batches all have one shape (``Trainer`` draws exactly ``batch_size``
  sequences per micro-batch), so the shape guards hold too.

Lambda 0 and the penalty mechanism stay on SDPA's causal (flash) kernel, and statistics or
penalty terms need explicit probabilities, so this path is only the bias fast path
(``localist.compute`` plans it per layer: CUDA, FlexAttention importable, no attention dropout,
``LOCALIST_FLEX`` not ``0``). FlexAttention has no CPU backward; the CPU tests lift that check
to run the real compiled step through its dense reference (tests/test_compiled_step.py).
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
          "failed": None, "kernel": {}, "mask_builder": {}}  # compiled functions by backend


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


def _compiled(fn, backend: str | None):
    """``fn`` compiled once per process and backend; ``fn`` itself inside a compiled step (traced
    into its graph) or with backend None (eager: FlexAttention then materialises the scores)."""
    if backend is None or torch.compiler.is_compiling():
        return fn
    cache = _state["kernel" if fn is _flex_attention else "mask_builder"]
    if backend not in cache:
        cache[backend] = torch.compile(fn, dynamic=False, backend=backend)
    return cache[backend]


def _backend(device, backend: str | None) -> str | None:
    if backend == "auto":
        return "inductor" if torch.device(device).type == "cuda" else None
    return backend


# -- the mask and score functions: fixed code, data only in tensors -------------------------------


def _semantic_mask(block: torch.Tensor, open_: torch.Tensor):
    def mask_mod(b, h, q, kv):
        return (kv <= q) & ((block[b, q] == block[b, kv]) | open_)
    return mask_mod


def _window_mask(width: torch.Tensor, open_: torch.Tensor):
    def mask_mod(b, h, q, kv):
        return (kv <= q) & ((q - kv < width) | open_)
    return mask_mod


def _semantic_score(block: torch.Tensor, bias: torch.Tensor):
    def score_mod(score, b, h, q, kv):
        return torch.where(block[b, q] == block[b, kv], score, score + bias)
    return score_mod


def _window_score(width: torch.Tensor, bias: torch.Tensor):
    def score_mod(score, b, h, q, kv):
        return torch.where(q - kv < width, score, score + bias)
    return score_mod


def _data(ctx, device):
    """The batch's block ids (semantic/sentence) or window width, as a tensor on `device`."""
    def build():
        if ctx.window is not None:
            return torch.full((), ctx.window, dtype=torch.int64, device=device)
        return ctx.block.to(device)
    return ctx.cached(("flex-data", str(device)), build)


def block_mask(ctx, T: int, device, hard: bool, backend: str | None = "auto"):
    """The batch's BlockMask: causal & in-block (hard) or causal only (soft), built once.

    ``backend``: how ``create_block_mask`` runs - "auto" (compiled on CUDA, eager elsewhere),
    a torch.compile backend name, or None (eager)."""
    def build():
        data = _data(ctx, device)
        open_ = torch.full((), not hard, dtype=torch.bool, device=device)
        if ctx.window is not None:
            mod, batch = _window_mask(data, open_), None
        else:
            mod, batch = _semantic_mask(data, open_), data.shape[0]
        return _compiled(create_block_mask, _backend(device, backend))(mod, batch, None, T, T, device=device)
    return ctx.cached(("flex-mask", hard, T, str(device)), build)


def score_mod(ctx, lam: float, device):
    """Adds log(1 - lambda) to out-of-block logits (-inf for lambda 1); one per lambda and batch."""
    def build():
        data = _data(ctx, device)
        bias = torch.full((), math.log1p(-lam) if lam < 1.0 else -math.inf, dtype=torch.float32, device=device)
        return (_window_score if ctx.window is not None else _semantic_score)(data, bias)
    return ctx.cached(("flex-score", lam, str(device)), build)


def prepare(ctx, T: int, device, backend: str | None = "auto") -> None:
    """Build every mask and score function this batch will use, before an eager model runs
    (a compiled step builds them inside its graph instead)."""
    for lam in sorted(set(ctx.lambdas)):
        if lam > 0.0 and ctx.mechanism == "bias":
            block_mask(ctx, T, device, lam >= 1.0, backend)
            score_mod(ctx, lam, device)


def attention(ctx, lam: float, query, key, value, scaling: float | None,
              backend: str | None = "inductor") -> torch.Tensor:
    """Bias-mechanism attention for 0 < lambda <= 1; returns (B, T, H, D) like the SDPA path.

    ``backend``: the torch.compile backend of the kernel and of ``create_block_mask`` (None: eager)."""
    T = query.shape[-2]
    mask = block_mask(ctx, T, query.device, lam >= 1.0, backend)
    mod = score_mod(ctx, lam, query.device)
    out = _compiled(_flex_attention, backend)(query, key, value, score_mod=mod, block_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous()


def try_attention(ctx, lam: float, query, key, value, scaling: float | None) -> torch.Tensor | None:
    """:func:`attention`, or None (after one warning, for the rest of the process) if it fails.
    For unplanned eager use only: a trainer's compiled step handles failures outside the step."""
    try:
        return attention(ctx, lam, query, key, value, scaling)
    except Exception as e:  # a compiler or kernel problem must not kill a trial: SDPA still works
        disable(f"{type(e).__name__}: {e}")
        return None


def disable(reason: str) -> None:
    """Switch the path off for the rest of the process, with one warning."""
    _state["failed"] = reason
    warnings.warn(f"localist: FlexAttention failed ({reason[:300]}); using SDPA masks instead",
                  RuntimeWarning, stacklevel=3)
