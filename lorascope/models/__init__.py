"""Models by name: ``load_model(cfg, task, num_labels) -> (model, tokenizer)`` loads a registered
model (``MODELS``), a .gguf file, a local folder or a Hugging Face name; ``head_modules`` finds a
classification head. Nothing here downloads.

This is the front door, and it costs nothing to import: the registered models' names and
descriptions are declared here (so ``lorascope record --help`` lists them without torch or
transformers); ``loaders.py`` implements them, and every other name is imported on first use."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lorascope.lazy import lazy_exports
from lorascope.registry import Registry

if TYPE_CHECKING:
    from lorascope.models.loaders import ModelLoader

__all__ = [
    "MODELS",
    "TASK_MODEL_CLASSES",
    "load_model",
    "cache_root",
    "convert_gguf",
    "tiny_tokenizer",
    "head_modules",
    "quiet_transformers",
]

MODELS: Registry[ModelLoader] = Registry("model", provider="lorascope.models.loaders", declared={
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576), embedded: the default",
    "minilm-l6": "all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384), embedded: classification only",
    "tiny-gpt2": "a 2-block GPT-2 (hidden 32) built from a config, for tests and quick trials",
    "tiny-llama": "a 2-block Llama (hidden 32) built from a config",
    "tiny-bert": "a 2-block BERT (hidden 32) built from a config: classification only",
})

__getattr__, __dir__ = lazy_exports(__name__, {
    "TASK_MODEL_CLASSES": "lorascope.models.loaders",
    "load_model": "lorascope.models.loaders",
    "tiny_tokenizer": "lorascope.models.loaders",
    "head_modules": "lorascope.models.loaders",
    "quiet_transformers": "lorascope.models.loaders",
    "cache_root": "lorascope.models.gguf_cache",
    "convert_gguf": "lorascope.models.gguf_cache",
})
