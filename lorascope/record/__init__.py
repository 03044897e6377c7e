"""Recording LoRA training: discovery of LoRA pairs, the snapshot schedule, capture, the
background HDF5 writer, and the adapters (plain loop, Hugging Face Trainer).

Names are imported lazily so that ``lorascope.record.format`` (used by the reader) does not pull
in torch."""
from __future__ import annotations

from typing import Any

__all__ = ["Recorder", "NullRecorder", "LoraPair", "find_lora_pairs", "LorascopeCallback",
           "SizeEstimate"]

_WHERE = {
    "Recorder": "lorascope.record.recorder",
    "NullRecorder": "lorascope.record.recorder",
    "LoraPair": "lorascope.record.discover",
    "find_lora_pairs": "lorascope.record.discover",
    "LorascopeCallback": "lorascope.record.hf",
    "SizeEstimate": "lorascope.record.estimate",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lorascope.record' has no attribute {name!r}")
