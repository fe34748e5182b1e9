"""Speed figures a trial records: model FLOPs utilisation and dynamo's compile count."""

from __future__ import annotations

import torch

# Dense bf16/fp16 tensor-core peak in TFLOP/s by device name (most specific name first); MFU is
# null on devices not listed here and on CPU.
PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.5), ("H100", 989.4),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """The device's bf16 peak in FLOP/s, or None (CPU, or a GPU not in the table)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS if key in name), None)


def flops_per_token(model, seq_len: int) -> float:
    """6N + 12 L E T (nanoGPT's estimate): N without position embeddings, a tied head once."""
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    if wpe is not None:
        n -= wpe.weight.numel()
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * seq_len


def mfu(flops_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    return flops_token * tokens_per_s / peak if peak and tokens_per_s > 0 else None


def dynamo_counts(since: dict | None = None) -> dict[str, int]:
    """Dynamo's frames compiled and graph breaks in this process (minus ``since``, an earlier
    reading): with no graph break, each compiled frame is one graph."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return {"frames": 0, "graph_breaks": 0}
    now = {"frames": int(counters["frames"]["ok"]), "graph_breaks": int(sum(counters["graph_break"].values()))}
    return {k: v - (since or {}).get(k, 0) for k, v in now.items()}


def dynamo_frames() -> int:
    """Frames dynamo has compiled in this process so far (first compiles and recompiles alike);
    the difference across a warm stretch of training is its recompile count."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return 0
    return int(counters["frames"]["total"])
