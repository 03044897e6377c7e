"""Recording LoRA training (the training side: torch): the Recorder and its parts (the snapshot
schedule, capture into host buffers, update norms, the background writer, size estimates) and
the Hugging Face ``Trainer`` callback. The file format itself is ``lorascope.h5``.

A front door that costs nothing to import: each name is imported from its module on first use,
so ``LorascopeCallback`` alone brings in transformers, which a plain-loop Recorder does not need."""
from __future__ import annotations

from lorascope.lazy import lazy_exports

__all__ = ["Recorder", "NullRecorder", "LoraPair", "find_lora_pairs", "LorascopeCallback", "SizeEstimate"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "Recorder": "lorascope.record.recorder",
    "NullRecorder": "lorascope.record.recorder",
    "SizeEstimate": "lorascope.record.estimate",
    "LoraPair": "lorascope.lora.pairs",
    "find_lora_pairs": "lorascope.lora.pairs",
    "LorascopeCallback": "lorascope.record.hf",
})
