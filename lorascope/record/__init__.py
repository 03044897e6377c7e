"""Recording LoRA training (the training side: torch): the Recorder and its parts (the snapshot
schedule, capture into host buffers, update norms, the background writer, size estimates) and
the Hugging Face ``Trainer`` callback. The file format itself is ``lorascope.h5``.

``LorascopeCallback`` is imported on first use: it needs transformers, which a plain-loop
Recorder does not."""
from __future__ import annotations

from typing import Any

from lorascope.lora.pairs import LoraPair, find_lora_pairs
from lorascope.record.estimate import SizeEstimate
from lorascope.record.recorder import NullRecorder, Recorder

__all__ = ["Recorder", "NullRecorder", "LoraPair", "find_lora_pairs", "LorascopeCallback", "SizeEstimate"]


def __getattr__(name: str) -> Any:
    if name == "LorascopeCallback":
        from lorascope.record.hf import LorascopeCallback

        return LorascopeCallback
    raise AttributeError(f"module 'lorascope.record' has no attribute {name!r}")
