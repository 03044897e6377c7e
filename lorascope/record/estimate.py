"""How big a recording will be, before the run starts: bytes per snapshot × planned snapshots."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lorascope.config import RecordConfig
from lorascope.lora.pairs import LoraPair, find_lora_pairs, select_pairs
from lorascope.h5.format import numpy_storage_dtype
from lorascope.record.schedule import build_schedule

__all__ = ["SizeEstimate", "estimate_size", "format_bytes"]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class SizeEstimate:
    modules: int
    snapshots: int
    bytes_per_snapshot: int
    grad_snapshots: int
    state_bytes: int  # assumes two full-size float32 moments per matrix (AdamW); factored
    # optimizers such as Adafactor and CAME store far less
    total_bytes: int
    dtype: str
    compression: str

    def __str__(self) -> str:
        parts = [f"{self.snapshots} snapshots × {format_bytes(self.bytes_per_snapshot)}"]
        if self.grad_snapshots:
            parts.append(f"{self.grad_snapshots} gradient snapshots")
        if self.state_bytes:
            parts.append(f"optimizer state ≈ {format_bytes(self.state_bytes)}")
        codec = "" if self.compression == "none" else f", before {self.compression} compression"
        return (f"recording ≈ {format_bytes(self.total_bytes)} ({', '.join(parts)}; "
                f"{self.modules} modules, {self.dtype}{codec})")


def estimate_size(model: torch.nn.Module | dict[str, LoraPair], config: RecordConfig,
                  total_steps: int, grad_accum: int = 1) -> SizeEstimate:
    """For a model (or its selected LoRA pairs) and ``total_steps`` optimizer steps."""
    pairs = model if isinstance(model, dict) else select_pairs(find_lora_pairs(model), config.modules)
    itemsize = numpy_storage_dtype(config.dtype).itemsize
    # from the pairs' sizes, not the parameters': under FSDP1 and ZeRO-3 those are shards
    values = sum(math.prod(p.a_shape) + math.prod(p.b_shape) for p in pairs.values())
    # DoRA's magnitude vectors go with every snapshot, always float32
    magnitudes = sum(p.magnitude.numel() for p in pairs.values() if p.magnitude is not None)
    per_snapshot = values * itemsize + magnitudes * 4
    schedule = build_schedule(config, total_steps)
    snapshots = schedule.snapshot_count(total_steps) + (total_steps not in schedule)  # the final weights are always kept
    updates = snapshots - 1  # step 0 has no gradient or optimizer state
    grad_snapshots = updates * grad_accum if config.grads else 0
    state_bytes = updates * values * 4 * 2 if config.optimizer_state else 0
    w0 = sum(p.in_features * p.out_features * 4 for p in pairs.values()
             if config.base_weights or p.magnitude is not None)  # DoRA's ΔW needs W0
    per_step = len(pairs) * 4 * 4 + 8 * 8  # update norms and scalars, every optimizer step
    total = (snapshots * per_snapshot + grad_snapshots * values * itemsize + state_bytes + w0
             + total_steps * per_step)
    return SizeEstimate(len(pairs), snapshots, per_snapshot, grad_snapshots, state_bytes,
                        total, config.dtype, config.compression)
