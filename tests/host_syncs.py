"""Counting, on a CPU, the calls that would make the host wait for a GPU.

``torch.cuda.set_sync_debug_mode`` needs CUDA. On a CPU every tensor is a host tensor, so this
counts by the call instead, through a torch-function mode that sees every torch call made from
Python: reading a value back (``item``, ``bool``, ``float``, ``tolist``, ``cpu``, ``numpy``),
data-dependent shapes (``nonzero``, ``masked_select``, ``unique``), and making a tensor from
Python data with an explicit device (``torch.tensor(x, device=...)``, a blocking copy from
pageable memory on CUDA). Host-only tensors made without a device (batch indices) are not
counted. (A dispatch-level mode would also see reads made from C++, but FlexAttention's eager
kernel refuses to run under one.)
"""

from __future__ import annotations

from collections import Counter

from torch.overrides import TorchFunctionMode

READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__",
         "nonzero", "masked_select", "unique", "unique_consecutive", "equal"}
FROM_PYTHON = {"tensor", "as_tensor", "scalar_tensor"}


class HostSyncs(TorchFunctionMode):
    """``with HostSyncs() as s: ...``; then ``s.seen`` counts each kind of call (empty: none)."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in READS or (name in FROM_PYTHON and kwargs.get("device") is not None):
            self.seen[name] += 1
        return func(*args, **kwargs)
