"""PEFT's LoRA layers as lorascope LoRA pairs. Imported only when PEFT already is.

Every ``peft.tuners.lora.LoraLayer`` is looked at. Its exact type picks a reader from
``PEFT_LAYERS``; a type that is not registered (PEFT adds layer types often, and subclasses such
as torchao's hold their base weight differently) is not guessed at but listed as not recorded,
as are LoRA variants whose ΔW is not scaling · B · A (DoRA is the one variant recorded, with its
magnitude vector), grouped convolutions, merged adapters, adapters active beside the recorded
one, and ``modules_to_save`` copies (trained in full, not low-rank)."""
from __future__ import annotations

import enum
import json
from typing import Any, Callable

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import ModulesToSaveWrapper

from lorascope.lora.pairs import Discovery, LoraPair, NotRecorded, layer_index_from_name
from lorascope.registry import Registry

__all__ = ["PEFT_LAYERS", "inspect", "setup", "layer_type"]

Reader = Callable[[str, LoraLayer, str], LoraPair]

# Keyed by the layer's module and class name ("peft.tuners.lora.layer.Linear"). Registering the
# bitsandbytes names costs nothing when bitsandbytes is not installed: no layer has that type.
PEFT_LAYERS: Registry[Reader] = Registry("PEFT LoRA layer type")

try:  # PEFT ≥ 0.15 implements DoRA (and other variants) as a layer's lora_variant
    from peft.tuners.lora.variants import DoraLinearVariant, _DoraConvNdVariant

    _DORA: tuple[type, ...] = (DoraLinearVariant, _DoraConvNdVariant)
except ImportError:  # before, DoRA lived in the layer itself and there were no variants
    _DORA = ()


class _NotRecordable(Exception):
    """Raised by a reader for a layer of its type that it cannot record (the reason)."""


def layer_type(module: torch.nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _kind(module: torch.nn.Module) -> str:
    """The recording's kind: "peft.Linear", "peft.Embedding", "peft.bnb.Linear4bit", ..."""
    return "peft." + layer_type(module).removeprefix("peft.tuners.lora.").removeprefix("layer.")


def _pair(name: str, module: LoraLayer, adapter: str, A: torch.nn.Parameter, B: torch.nn.Parameter,
          *, in_features: int, out_features: int, base_weight: Callable[[], torch.Tensor],
          matrix: Callable[[torch.Tensor], torch.Tensor] | None = None,
          magnitude_norm: str = "row", weight_shape: tuple[int, ...] = ()) -> LoraPair:
    magnitudes = getattr(module, "lora_magnitude_vector", None) or {}
    magnitude = magnitudes[adapter] if adapter in magnitudes else None
    # a DoraLinearLayer holding the vector as .weight, or (older PEFT) the parameter itself
    magnitude = getattr(magnitude, "weight", magnitude)
    return LoraPair(
        name=name, A=A, B=B, scaling=float(module.scaling[adapter]), rank=int(module.r[adapter]),
        alpha=float(module.lora_alpha[adapter]), in_features=int(in_features),
        out_features=int(out_features), kind=_kind(module), init="",
        layer_index=layer_index_from_name(name), base_weight=base_weight, adapter=adapter,
        magnitude=magnitude, magnitude_norm=magnitude_norm if magnitude is not None else "",
        weight_shape=weight_shape, matrix=matrix,
    )


@PEFT_LAYERS.register("peft.tuners.lora.layer.Linear")
@PEFT_LAYERS.register("peft.tuners.lora.bnb.Linear8bitLt")
@PEFT_LAYERS.register("peft.tuners.lora.bnb.Linear4bit")
def _linear(name: str, module: LoraLayer, adapter: str) -> LoraPair:
    """nn.Linear, GPT-2's Conv1D (fan_in_fan_out: its weight is stored (in, out)) and the
    bitsandbytes 8- and 4-bit layers, whose W0 is the dequantised base weight."""
    A = module.lora_A[adapter].weight  # (rank, in)
    B = module.lora_B[adapter].weight  # (out, rank)
    base = module.get_base_layer()
    transposed = bool(getattr(module, "fan_in_fan_out", False))

    def base_weight() -> torch.Tensor:
        w = dequantize_module_weight(base).detach()  # the weight itself unless quantised
        return w.T if transposed else w

    # the layer's own sizes, not A's and B's shapes: under FSDP1 and ZeRO-3 those are a rank's
    # slice or an empty placeholder
    return _pair(name, module, adapter, A, B, in_features=module.in_features,
                 out_features=module.out_features, base_weight=base_weight)


def _transposed(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.T


@PEFT_LAYERS.register("peft.tuners.lora.layer.Embedding")
def _embedding(name: str, module: LoraLayer, adapter: str) -> LoraPair:
    """PEFT keeps lora_embedding_A (rank, num_embeddings) and lora_embedding_B (embedding_dim,
    rank), and ΔW = scaling · (B_e @ A_e)ᵀ has the embedding's (num_embeddings, embedding_dim)
    shape. Recorded as B @ A in that shape, like W0: A = B_eᵀ, B = A_eᵀ. This also puts the
    zero-initialised factor (A_e) in the role of B, as for every other layer."""
    A_e = module.lora_embedding_A[adapter]  # (rank, num_embeddings)
    B_e = module.lora_embedding_B[adapter]  # (embedding_dim, rank)
    base = module.get_base_layer()
    return _pair(name, module, adapter, B_e, A_e, in_features=B_e.shape[0], out_features=A_e.shape[1],
                 base_weight=lambda: base.weight.detach(), matrix=_transposed,
                 magnitude_norm="column")  # DoRA on an embedding rescales per embedding dimension


def _flattened(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1)


@PEFT_LAYERS.register("peft.tuners.lora.layer.Conv1d")
@PEFT_LAYERS.register("peft.tuners.lora.layer.Conv2d")
@PEFT_LAYERS.register("peft.tuners.lora.layer.Conv3d")
def _conv(name: str, module: LoraLayer, adapter: str) -> LoraPair:
    """lora_A is a convolution with the base's kernel (rank, in, *k), lora_B a 1×1 one (out, rank,
    1, ...). The kernel as a matrix (out, in·∏k) is then exactly B @ A of the flattened weights."""
    base = module.get_base_layer()
    if base.groups > 1:
        raise _NotRecordable(f"a grouped convolution (groups={base.groups}): ΔW is not one B·A")
    A = module.lora_A[adapter].weight
    B = module.lora_B[adapter].weight
    return _pair(name, module, adapter, A, B, in_features=A[0].numel(), out_features=B.shape[0],
                 base_weight=lambda: base.weight.detach().flatten(1), matrix=_flattened,
                 weight_shape=tuple(base.weight.shape))


# Why a layer is left out, for the warning and the file's not_recorded attribute.
SAVED_COPY = "modules_to_save: a full copy trained beside the adapters, not a LoRA pair"
NOT_LORA = "a PEFT adapter that is not LoRA"
UNVERIFIED = "a PEFT LoRA layer type lorascope has not verified, so its ΔW is not assumed to be scaling·B·A"
MERGED = "its adapter is merged into the base weight; unmerge it (model.unmerge_adapter()) before training"
LORA_BIAS = "lora_bias=True: the bias of lora_B trains but only A and B are recorded"


def inspect(name: str, module: torch.nn.Module) -> tuple[LoraPair | None, list[NotRecorded]]:
    """The pair ``module`` contributes (None when it is no LoRA layer or cannot be recorded) and
    what of it is not recorded."""
    kind = type(module).__name__
    if isinstance(module, ModulesToSaveWrapper):
        return None, [NotRecorded(name, kind, SAVED_COPY)]
    if not isinstance(module, LoraLayer):
        return None, [NotRecorded(name, kind, NOT_LORA)] if isinstance(module, BaseTunerLayer) else []
    adapters = [a for a in module.active_adapters if a in module.r]  # inactive adapters never count
    if not adapters:
        return None, []
    if layer_type(module) not in PEFT_LAYERS:
        return None, [NotRecorded(name, kind, UNVERIFIED)]
    if module.merged:
        return None, [NotRecorded(name, kind, MERGED)]
    adapter, *others = adapters
    notes = [NotRecorded(name, kind, f"adapter {other!r} is active beside {adapter!r}; lorascope "
                                     "records one adapter per layer") for other in others]
    variant = getattr(module, "lora_variant", {}).get(adapter)
    if variant is not None and not isinstance(variant, _DORA):
        return None, notes + [NotRecorded(name, kind, f"PEFT's {type(variant).__name__}: ΔW is not scaling·B·A")]
    try:
        pair = PEFT_LAYERS.get(layer_type(module))(name, module, adapter)
    except _NotRecordable as exc:
        return None, notes + [NotRecorded(name, kind, str(exc))]
    if getattr(module, "lora_bias", {}).get(adapter):
        notes.append(NotRecorded(name, kind, LORA_BIAS))
    return pair, notes


def _jsonable(value: Any) -> Any:
    """A LoraConfig as a dict → plain JSON values (sets sorted, enums by value)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _init_name(value: Any) -> str:
    """PEFT's init_lora_weights as a name: True is its default (kaiming-uniform A, zero B)."""
    if value is True:
        return "peft-default"
    if value is False:
        return "random"  # PEFT: A and B both random, so ΔW ≠ 0 before training
    return str(value)


def setup(model: torch.nn.Module, found: Discovery) -> dict[str, Any]:
    """The model's PEFT setup for the recording; fills each pair's ``init`` from its adapter's
    config. {} when the model carries no PEFT config (LoRA layers injected by hand)."""
    holder = next((m for m in model.modules() if isinstance(getattr(m, "peft_config", None), dict)), None)
    configs = holder.peft_config if holder is not None else {}
    for pair in found.pairs.values():
        if pair.adapter in configs:
            pair.init = _init_name(getattr(configs[pair.adapter], "init_lora_weights", ""))
    saved = [n.module for n in found.not_recorded if n.reason == SAVED_COPY]
    if not configs and not saved:
        return {}
    active = getattr(holder, "active_adapters", None) if holder is not None else None
    if callable(active):
        active = active()
    adapters = {name: _jsonable(c.to_dict()) for name, c in configs.items()}
    json.dumps(adapters)  # what cannot be stored fails here, not in the writer thread
    return {
        "active_adapters": list(active) if active else sorted({p.adapter for p in found.pairs.values()}),
        "adapters": adapters,
        "modules_to_save": saved,
    }
