"""Device and mixed-precision choices: which device, which autocast dtype, whether a GradScaler.

fp16 needs a GradScaler (its range is too small for raw gradients); bf16 has fp32's range and does
not. Both run through the same loop on CPU and CUDA: torch's CPU autocast and CPU GradScaler do
on the host what the CUDA ones do on a GPU, so the fp16 path (scaling, overflow, skipped steps)
is tested without one. ``auto`` still picks fp32 on CPU: CPU autocast is slower than fp32 for
the models lorascope trains there."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lorascope.errors import UsageError

__all__ = ["Precision", "PRECISIONS", "resolve_device", "resolve_precision"]


@dataclass(frozen=True)
class Precision:
    mode: str  # "off" | "fp16" | "bf16"
    dtype: torch.dtype | None  # autocast dtype, None = plain fp32
    use_scaler: bool

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """The loss scaler of this precision on ``device`` (a disabled one, a no-op, without fp16)."""
        return torch.amp.GradScaler(device.type, enabled=self.use_scaler)


PRECISIONS = {
    "off": Precision("off", None, False),
    "bf16": Precision("bf16", torch.bfloat16, False),
    "fp16": Precision("fp16", torch.float16, True),
}


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


def _auto_mode(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "off"  # CPU autocast (bf16 or fp16) is slower than fp32 for models this small on most CPUs


def resolve_precision(mode: str, device: torch.device) -> Precision:
    if mode == "auto":
        mode = _auto_mode(device)
    if mode not in PRECISIONS:
        raise UsageError(f"unknown amp mode {mode!r}; use auto, {', '.join(PRECISIONS)}")
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU has no bfloat16 support; use --amp fp16 or --amp off")
    return PRECISIONS[mode]
