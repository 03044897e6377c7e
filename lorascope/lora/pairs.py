"""Finding the LoRA pairs of a model by type: lorascope's ``LoRALinear`` and PEFT's LoRA
``Linear`` (which also wraps GPT-2's ``Conv1D``). Never by name substrings or shapes: a name says
nothing reliable about which matrix is A, and shapes are ambiguous when rank equals a dimension."""
from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from lorascope.errors import UsageError

__all__ = ["LoraPair", "lora_pairs", "find_lora_pairs", "select_pairs", "unwrap_model"]


@dataclass
class LoraPair:
    name: str  # model.named_modules() name, verbatim
    A: torch.nn.Parameter  # (rank, in_features)
    B: torch.nn.Parameter  # (out_features, rank)
    scaling: float
    rank: int
    alpha: float
    in_features: int
    out_features: int
    kind: str  # "lorascope.LoRALinear" | "peft.Linear"
    init: str
    layer_index: int | None
    base_weight: Callable[[], torch.Tensor]  # pretrained W0 as (out, in)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strips DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers, so
    that module names are the user's names and not ``module._orig_mod.transformer...``."""
    wrappers: tuple[type, ...] = (
        torch.nn.parallel.DistributedDataParallel,
        torch.nn.DataParallel,
    )
    # a compiled model means dynamo is imported already; importing it here would cost seconds
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    compiled: tuple[type, ...] = (dynamo.OptimizedModule,) if dynamo is not None else ()
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif compiled and isinstance(model, compiled):
            model = model._orig_mod
        else:
            return model


def layer_index_from_name(name: str) -> int | None:
    """The block index: the first purely numeric component ("transformer.h.11.attn" → 11)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


# A model that holds a layer type has imported that type's module, so only modules already
# imported are looked at: recording a lorascope model never pays for importing PEFT (seconds).

def _lorascope_types() -> tuple[type, ...]:
    module = sys.modules.get("lorascope.lora.layer")
    return (module.LoRALinear,) if module is not None else ()


def _peft_types() -> tuple[type, ...]:
    if "peft" not in sys.modules:
        return ()
    from peft.tuners.lora import Linear as PeftLinear

    return (PeftLinear,)


def _from_lorascope(name: str, module) -> LoraPair:
    weight_fn = getattr(module, "pretrained_weight", None) or module.base_weight
    return LoraPair(
        name=name, A=module.A, B=module.B, scaling=float(module.scaling), rank=int(module.rank),
        alpha=float(module.alpha), in_features=int(module.in_features),
        out_features=int(module.out_features), kind="lorascope.LoRALinear",
        init=str(getattr(module, "init", "") or ""),
        layer_index=module.layer_index if module.layer_index is not None else layer_index_from_name(name),
        base_weight=weight_fn,
    )


def _from_peft(name: str, module) -> LoraPair | None:
    adapters = [a for a in module.active_adapters if a in module.lora_A]
    if not adapters:
        return None  # an adapter-less or disabled layer has nothing to record
    # Several active adapters at once are rare; the first is the one a user trains.
    adapter = adapters[0]
    A = module.lora_A[adapter].weight
    B = module.lora_B[adapter].weight
    base = module.get_base_layer()
    transpose = bool(getattr(module, "fan_in_fan_out", False))

    def base_weight() -> torch.Tensor:
        w = base.weight.detach()
        return w.T if transpose else w  # GPT-2's Conv1D stores (in, out)

    return LoraPair(
        name=name, A=A, B=B, scaling=float(module.scaling[adapter]), rank=int(module.r[adapter]),
        alpha=float(module.lora_alpha[adapter]), in_features=int(A.shape[1]),
        out_features=int(B.shape[0]), kind="peft.Linear", init="",
        layer_index=layer_index_from_name(name), base_weight=base_weight,
    )


def _iter_pairs(model: torch.nn.Module) -> Iterator[LoraPair]:
    ours, peft_types = _lorascope_types(), _peft_types()
    for name, module in unwrap_model(model).named_modules():
        if ours and isinstance(module, ours):
            yield _from_lorascope(name, module)
        elif peft_types and isinstance(module, peft_types):
            pair = _from_peft(name, module)
            if pair is not None:
                yield pair


def lora_pairs(model: torch.nn.Module) -> dict[str, LoraPair]:
    """Every LoRA pair of ``model`` in ``named_modules()`` order (none: an empty dict). The one
    discovery of the project: the Recorder, the optimizer's parameter groups and the model
    report all see the same pairs."""
    return {p.name: p for p in _iter_pairs(model)}


def find_lora_pairs(model: torch.nn.Module) -> dict[str, LoraPair]:
    """As ``lora_pairs``, but a model without any is a usage error: recording it would produce
    an empty file."""
    pairs = lora_pairs(model)
    if not pairs:
        raise UsageError(
            "the model has no LoRA modules to record; add LoRA first with "
            "lorascope.lora.add_lora(model, LoraConfig(...)) or peft.get_peft_model(model, "
            "peft.LoraConfig(...))"
        )
    return pairs


def select_pairs(pairs: dict[str, LoraPair], patterns: str) -> dict[str, LoraPair]:
    """Keeps the pairs whose name matches any of the comma-separated globs ("*" keeps all)."""
    globs = [p.strip() for p in patterns.split(",") if p.strip()] or ["*"]
    chosen = {n: p for n, p in pairs.items() if any(fnmatch.fnmatchcase(n, g) for g in globs)}
    if not chosen:
        examples = ", ".join(list(pairs)[:4])
        raise UsageError(
            f"record.modules {patterns!r} matches none of the {len(pairs)} LoRA modules; "
            f"use a glob over names such as {examples}"
        )
    return chosen
