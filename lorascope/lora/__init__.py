"""LoRA as small verbs: ``add_lora`` puts adapters on a model's chosen projections and freezes the
rest, ``lora_layers`` finds them (by type), ``count_parameters`` says what trains, ``merge_lora``
folds them back, ``save_adapters``/``load_adapters`` move them between runs.

This is the front door, and it costs nothing to import: the inits' names and descriptions are
declared here (so ``lorascope record --help`` lists them without torch), and every other name is
imported from its module on first use: the layer from ``layer.py``, the inits from ``inits.py``,
target selection from ``targets.py`` (roles in ``roles.py``), the model-wide verbs from
``adaptation.py`` and the adapter files from ``adapters.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from lorascope.lazy import lazy_exports
from lorascope.registry import Registry

if TYPE_CHECKING:
    from lorascope.lora.inits import Init

__all__ = [
    "LoRALinear",
    "INITS",
    "ROLES",
    "add_lora",
    "lora_layers",
    "lora_parameters",
    "count_parameters",
    "merge_lora",
    "norm_modules",
    "is_adaptable",
    "save_adapters",
    "load_adapters",
]

# Implemented in lorascope.lora.inits (one function each); described here, one line each, for --help.
INITS: Registry[Init] = Registry("LoRA init", provider="lorascope.lora.inits", declared={
    "kaiming_uniform": "A ~ kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(in)), B = 0 (loralib, PEFT)",
    "kaiming_normal": "A ~ kaiming-normal(a=sqrt(5)) = N(0, 1/(3 in)), B = 0",
    "gaussian": "A ~ N(0, init_std), B = 0",
    "orthogonal": "A with orthonormal rows (a random rank-r projection), B = 0",
    "gaussian_b": "A = 0, B ~ N(0, init_std): the zero moves to A",
    "both_nonzero": "A ~ kaiming-uniform, B ~ N(0, init_std); base compensated so the output is unchanged",
    "gaussian_a_uniform_b": "A ~ N(0, init_std), B ~ uniform with std init_std; base compensated",
    "svd": "PiSSA: scaling*B@A = the top-r SVD part of W, base = the residual W - W_r",
})

__getattr__, __dir__ = lazy_exports(__name__, {
    "LoRALinear": "lorascope.lora.layer",
    "lora_layers": "lorascope.lora.layer",
    "is_adaptable": "lorascope.lora.layer",
    "ROLES": "lorascope.lora.roles",
    "add_lora": "lorascope.lora.adaptation",
    "lora_parameters": "lorascope.lora.adaptation",
    "count_parameters": "lorascope.lora.adaptation",
    "merge_lora": "lorascope.lora.adaptation",
    "norm_modules": "lorascope.lora.adaptation",
    "save_adapters": "lorascope.lora.adapters",
    "load_adapters": "lorascope.lora.adapters",
})
