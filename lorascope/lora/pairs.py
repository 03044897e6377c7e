"""Finding the LoRA pairs of a model by type: lorascope's ``LoRALinear`` and every PEFT
``LoraLayer`` (see ``peft_layers``). Never by name substrings or shapes: a name says nothing
reliable about which matrix is A, and shapes are ambiguous when rank equals a dimension.

A layer that holds LoRA but cannot be recorded right is never dropped without a word: it is a
``NotRecorded`` entry, which the Recorder warns about once and stores in the file."""
from __future__ import annotations

import fnmatch
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lorascope.errors import UsageError

__all__ = [
    "LoraPair", "NotRecorded", "NotRecordedWarning", "Discovery", "discover", "lora_pairs",
    "find_lora_pairs", "select_pairs", "unwrap_model", "warn_not_recorded", "clean_module_name",
]


@dataclass
class LoraPair:
    """One recorded adapter: ΔW = scaling · B @ A, shape (out, in) like W0.

    ``A`` and ``B`` are the parameters that train, in the recording's roles. Most layers hold
    them as the (rank, in) and (out, rank) matrices already; where a layer holds them otherwise
    (PEFT's Embedding keeps the factors transposed, a convolution keeps kernels), ``matrix``
    turns a tensor shaped like the parameter (its value, its gradient, an optimizer moment) into
    the recorded matrix."""

    name: str  # model.named_modules() name, verbatim but for wrapper parts (clean_module_name)
    A: torch.nn.Parameter  # (rank, in) through `matrix`
    B: torch.nn.Parameter  # (out, rank) through `matrix`
    scaling: float  # alpha / rank (alpha / sqrt(rank) with rsLoRA)
    rank: int
    alpha: float
    in_features: int
    out_features: int
    kind: str  # "lorascope.LoRALinear" | "peft.Linear" | "peft.Embedding" | "peft.bnb.Linear4bit" | ...
    init: str
    layer_index: int | None
    base_weight: Callable[[], torch.Tensor]  # W0 as (out, in): what ΔW is added to
    adapter: str = ""  # the PEFT adapter recorded; "" for lorascope's own layer
    # DoRA: W_eff = magnitude ⊙ (W0 + ΔW) / ‖W0 + ΔW‖, the norm taken per row (one magnitude
    # per output) or, for PEFT's Embedding, per column; None for plain LoRA
    magnitude: torch.nn.Parameter | None = None
    magnitude_norm: str = ""  # "row" | "column" | "" (no DoRA)
    # a convolution's kernel shape (out, in, *k): ΔW.reshape(weight_shape) is the kernel's change;
    # () where ΔW's (out, in) is the weight's own shape
    weight_shape: tuple[int, ...] = ()
    matrix: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def a_shape(self) -> tuple[int, int]:
        return (self.rank, self.in_features)

    @property
    def b_shape(self) -> tuple[int, int]:
        return (self.out_features, self.rank)

    def as_matrix(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like ``A``'s or ``B``'s parameter as the recorded matrix (a view)."""
        return tensor if self.matrix is None else self.matrix(tensor)

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current (A, B) as recorded: detached views, (rank, in) and (out, rank)."""
        return self.as_matrix(self.A.detach()), self.as_matrix(self.B.detach())


@dataclass(frozen=True)
class NotRecorded:
    """A layer (or part of one) that trains but is not in the recording, and why."""

    module: str
    type: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"module": self.module, "type": self.type, "reason": self.reason}


class NotRecordedWarning(UserWarning):
    """Some trained layers of the model are not recorded; the message names them and says why."""


@dataclass
class Discovery:
    pairs: dict[str, LoraPair]  # named_modules() order
    not_recorded: list[NotRecorded] = field(default_factory=list)
    # the model's PEFT setup, {} without PEFT: {"active_adapters": [...], "adapters": {name:
    # LoraConfig as a dict}, "modules_to_save": [module names]}
    peft: dict[str, Any] = field(default_factory=dict)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strips DDP/DataParallel/FSDP1/DeepSpeed-engine (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, so that module names are the user's names and not
    ``module._orig_mod.transformer...``."""
    wrappers: tuple[type, ...] = (
        torch.nn.parallel.DistributedDataParallel,
        torch.nn.DataParallel,
        *_loaded_types(("torch.distributed.fsdp.fully_sharded_data_parallel", "FullyShardedDataParallel"),
                       ("deepspeed.runtime.engine", "DeepSpeedEngine")),
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


def _loaded_types(*where: tuple[str, str]) -> tuple[type, ...]:
    """Classes of modules the process imported already: a model wrapped by a framework has
    imported it, and importing one here would cost seconds (DeepSpeed)."""
    return tuple(getattr(sys.modules[module], name) for module, name in where if module in sys.modules)


# Module names that wrappers insert inside a model (FSDP1's units, activation checkpointing):
# not the user's names, and absent from an unwrapped run of the same model.
WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def clean_module_name(name: str) -> str:
    """``named_modules()`` name without the parts that wrappers insert."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_PARTS)


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


def discover(model: torch.nn.Module) -> Discovery:
    """Every LoRA pair of ``model`` in ``named_modules()`` order, what is not recorded and why,
    and the PEFT setup. The one discovery of the project: the Recorder, the optimizer's
    parameter groups and the model report all see the same pairs."""
    model = unwrap_model(model)
    ours = _lorascope_types()
    peft = None
    if "peft" in sys.modules:
        from lorascope.lora import peft_layers as peft
    found = Discovery({})
    for name, module in model.named_modules():
        name = clean_module_name(name)
        if ours and isinstance(module, ours):
            found.pairs[name] = _from_lorascope(name, module)
        elif peft is not None:
            pair, notes = peft.inspect(name, module)
            if pair is not None:
                found.pairs[name] = pair
            found.not_recorded.extend(notes)
    if peft is not None:
        found.peft = peft.setup(model, found)
    return found


def lora_pairs(model: torch.nn.Module) -> dict[str, LoraPair]:
    """The recordable LoRA pairs of ``model`` in ``named_modules()`` order (none: an empty dict)."""
    return discover(model).pairs


def find_lora_pairs(model: torch.nn.Module) -> dict[str, LoraPair]:
    """As ``lora_pairs``, but a model without any is a usage error: recording it would produce
    an empty file."""
    return require_pairs(discover(model))


def require_pairs(found: Discovery) -> dict[str, LoraPair]:
    if found.pairs:
        return found.pairs
    if found.not_recorded:
        raise UsageError(
            f"none of the model's LoRA layers can be recorded: {describe_not_recorded(found.not_recorded)}; "
            "use LoRA on nn.Linear, GPT-2 Conv1D, nn.Embedding, convolution or bitsandbytes layers"
        )
    raise UsageError(
        "the model has no LoRA modules to record; add LoRA first with "
        "lorascope.lora.add_lora(model, LoraConfig(...)) or peft.get_peft_model(model, "
        "peft.LoraConfig(...))"
    )


def describe_not_recorded(entries: list[NotRecorded], examples: int = 3) -> str:
    """One line: entries grouped by type and reason, a few module names each."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for entry in entries:
        groups[(entry.type, entry.reason)].append(entry.module)
    parts = []
    for (kind, reason), names in groups.items():
        more = f" and {len(names) - examples} more" if len(names) > examples else ""
        shown = ", ".join(names[:examples]) + more
        parts.append(f"{len(names)} × {kind} ({reason}): {shown}")
    return "; ".join(parts)


def warn_not_recorded(entries: list[NotRecorded]) -> None:
    """The one warning at the start of a recording that names what is left out."""
    if entries:
        warnings.warn(NotRecordedWarning(f"not recorded: {describe_not_recorded(entries)}"), stacklevel=3)


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
