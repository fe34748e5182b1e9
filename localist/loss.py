"""Cross-entropy of a linear head, chunk by chunk: the B x T x vocab logits never exist at once.

A GPT-2 step spends most of its memory traffic outside attention on the logits: with vocabulary
50257, batch 32 and seq 1024 they are 3.3 GB in bf16 and twice that again as the fp32 copy a
plain ``cross_entropy(logits.float(), ...)`` makes and keeps for backward. Here the head is
applied to a few thousand rows at a time; each chunk's loss and its gradients (softmax minus
one-hot, through the head's matmuls) are computed in the forward pass, so backward only scales
them. The arithmetic is the plain path's (logits from the head in the autocast dtype, softmax in
fp32, gradient matmuls in the autocast dtype, the weight gradient summed in fp32); only the
order of the sum over rows differs.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 2**27  # logits per chunk (512 MB in fp32): ~2,700 rows at vocabulary 50257


def _compute_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else w.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, rows: int, grads: bool):
        dtype = _compute_dtype(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            n = hidden.shape[0]
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if grads else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grads else None
            for s in range(0, n, rows):
                hc, tc = h[s:s + rows], target[s:s + rows]
                logits = (hc @ w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                total = total + (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
                if grads:
                    g = torch.softmax(logits, dim=-1)
                    g = g.scatter_add(1, tc[:, None], torch.full_like(lse[:, None], -1.0)).to(dtype)
                    grad_h[s:s + rows] = (g @ w).to(grad_h.dtype)
                    grad_w = grad_w + (g.t() @ hc).float()
        if grads:
            ctx.save_for_backward(grad_h / n, (grad_w / n).to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_out * grad_h, grad_out * grad_w, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """mean_i CE(hidden[i] @ weight.T, target[i]) for hidden (N, E), weight (V, E), target (N,)."""
    rows = max(1, chunk_elements // weight.shape[0])
    grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, target, rows, grads)
