"""Device and mixed-precision choices: which device, which autocast dtype, whether a GradScaler.

fp16 needs a GradScaler (its range is too small for raw gradients); bf16 has fp32's range and does
not. fp16 autocast on CPU is not supported by the loop, so asking for it there is an error, not a
silent fallback."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lorascope.errors import UsageError

__all__ = ["Precision", "resolve_device", "resolve_precision"]


@dataclass(frozen=True)
class Precision:
    mode: str  # "off" | "fp16" | "bf16"
    dtype: torch.dtype | None  # autocast dtype, None = plain fp32
    use_scaler: bool

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} was asked for but this torch sees no CUDA GPU; use --device cpu")
    return device


def resolve_precision(mode: str, device: torch.device) -> Precision:
    if mode == "auto":
        if device.type == "cuda":
            mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            # bf16 autocast on CPU is slower than fp32 for models this small on most CPUs.
            mode = "off"
    if mode == "off":
        return Precision("off", None, False)
    if mode == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    if mode == "fp16":
        if device.type != "cuda":
            raise UsageError("fp16 mixed precision needs a CUDA device; on CPU use --amp bf16 or --amp off")
        return Precision("fp16", torch.float16, True)
    raise UsageError(f"unknown amp mode {mode!r}; use auto, off, fp16 or bf16")
