"""How one trial computes: precision, torch.compile, and the attention path of every layer.

Decided once per trial, before the first step, from the config and the device; the training
step only follows the plan. A decision taken inside a compiled step would be a dynamo guard
(a recompile when it flips) or a graph break, so none is taken there.

Attention paths (``localist.attention.PATHS``: what a layer runs in a training step; evaluation
collects statistics and always runs ``explicit``):

- ``sdpa-causal``: lambda 0, SDPA's own causal (flash) kernel - the vanilla GPT-2 layer;
- ``flex-hard`` / ``flex-soft``: bias mechanism, lambda 1 / 0 < lambda < 1, on CUDA:
  FlexAttention with a block-sparse mask / a score modification (``localist.flex``);
- ``sdpa-mask``: the bias mechanism through SDPA with a materialised mask (CPU, or CUDA when
  FlexAttention is off, unavailable or failed);
- ``explicit``: the probabilities in hand - the penalty mechanism needs their out-of-block mass.

FlexAttention has no attention dropout, so a layer with attention dropout above 0 takes
``sdpa-mask``; ``model.attn_dropout`` (0 by default, hub models included) keeps it off.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, replace

import torch

from localist import flex
from localist.attention import FLEX_PATHS, SDPA_MASK, layer_paths
from localist.errors import UserError

BACKEND_ENV = "LOCALIST_COMPILE_BACKEND"  # torch.compile backend (default inductor; diagnostics: aot_eager)


@dataclass(frozen=True)
class Plan:
    """What the trial's training step does on its device."""

    device_type: str
    precision: str  # "no" | "bf16" | "fp16"
    compiled: bool
    backend: str  # torch.compile backend of the step (and of FlexAttention kernels outside it)
    flex: bool  # FlexAttention for the bias layers with 0 < lambda
    flex_note: str  # why FlexAttention is on or off, for the trial's log and trial.parquet
    paths: tuple[str, ...]

    def without_flex(self, reason: str) -> "Plan":
        """The same plan on SDPA masks (FlexAttention failed to compile or run)."""
        return replace(self, flex=False, flex_note=reason,
                       paths=tuple(SDPA_MASK if p in FLEX_PATHS else p for p in self.paths))

    @property
    def uses_flex(self) -> bool:
        return any(p in FLEX_PATHS for p in self.paths)


def precision(setting: str, device_type: str) -> str:
    """train.precision: auto is bf16 on a GPU that has it, else full precision."""
    if setting != "auto":
        return setting
    if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def flex_decision(device_type: str, mechanism: str, attn_dropout: float) -> tuple[bool, str]:
    """Whether the bias layers may use FlexAttention here, and why (not)."""
    if mechanism != "bias":
        return False, "penalty mechanism: layers need their probabilities"
    if device_type != "cuda":
        return False, f"{device_type}: FlexAttention trains on CUDA only"
    if not flex.available():
        return False, f"torch {torch.__version__} has no FlexAttention"
    if not flex.enabled():
        return False, flex.failure() or "LOCALIST_FLEX=0"
    if attn_dropout > 0.0:
        return False, f"attention dropout {attn_dropout:g}: FlexAttention has none (model.attn_dropout: 0 enables it)"
    return True, "FlexAttention"


def plan(cfg, device_type: str, lambdas: list[float], attn_dropout: float, *,
         backend: str | None = None, force_flex: bool | None = None) -> Plan:
    """The trial's plan. ``backend`` / ``force_flex`` override the defaults (the CPU proof of the
    compiled GPU step runs FlexAttention on CPU under dynamo's ``aot_eager``)."""
    loc = cfg.locality
    flex_on, note = flex_decision(device_type, loc.mechanism, attn_dropout)
    if force_flex is not None:
        flex_on, note = force_flex, "forced" if force_flex else "forced off"
    return Plan(device_type=device_type, precision=precision(cfg.train.precision, device_type),
                compiled=cfg.train.compiled_on(device_type),
                backend=backend or os.environ.get(BACKEND_ENV) or "inductor",
                flex=flex_on, flex_note=note, paths=layer_paths(lambdas, loc.mechanism, flex_on))


def compile_step(fn, p: Plan):
    """The step function compiled as the plan says (one graph per trial: no graph breaks, data as
    tensors), or ``fn`` itself.

    Compiling starts from a clean dynamo state: dynamo caches compiled code by code object, and
    every trial's step is the same ``Trainer._forward_loss``, so in a process that runs trial
    after trial (a reused Ray actor) each trial would add a cache entry whose guards keep the
    earlier trials' models alive, and after dynamo's recompile limit (8) the step would silently
    run eagerly. (Compiled kernels on disk, inductor's and Triton's caches, are kept.)"""
    if not p.compiled:
        return fn
    torch._dynamo.reset()
    return torch.compile(fn, backend=p.backend)


# -- a GPU trial without a usable GPU ---------------------------------------------------------------


class NoCudaError(UserError, RuntimeError):
    """A trial was given a GPU but this process's torch cannot use it."""


def _driver() -> str:
    try:
        with open("/proc/driver/nvidia/version") as f:
            return f.readline().strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or out.stderr.strip() or f"nvidia-smi exit {out.returncode}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"no NVIDIA driver found ({type(e).__name__}: nvidia-smi)"


def require_cuda(gpus: list) -> None:
    """Fail at once, naming torch's build and the driver, when GPUs were assigned to this process
    but torch cannot use CUDA (a CPU wheel, or a driver older than the wheel's CUDA)."""
    if not gpus or torch.cuda.is_available():
        return
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda})" if torch.version.cuda else \
        f"torch {torch.__version__}, a build without CUDA"
    raise NoCudaError(
        f"this trial was given GPU(s) {gpus} but torch cannot use CUDA: {build}; driver: {_driver()}. "
        "Install a CUDA build of torch on this node (cluster/README.md, 'A CUDA torch'), or run with gpu: 0.")
