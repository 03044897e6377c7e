"""Adapter files: the LoRA factors of a model (plus the base offsets of base-rewriting inits and
any other trainable parameter, such as tuned LayerNorms), in one safetensors file whose metadata
says what they are. Loading goes into a model that has the same adapters, or into a plain model,
in which case the adapters are created from the file."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lorascope.errors import UsageError
from lorascope.lora.layer import LoRALinear, lora_layers, replace_module

__all__ = ["save_adapters", "load_adapters", "ADAPTER_FORMAT"]

ADAPTER_FORMAT = "lorascope-adapters"
ADAPTER_FORMAT_VERSION = 1
_OFFSETS = ("base_offset_A", "base_offset_B")


def _layer_meta(name: str, layer: LoRALinear) -> dict:
    return {
        "name": name,
        "rank": layer.rank,
        "alpha": layer.alpha,
        "scaling": layer.scaling,
        "rslora": layer.rslora,
        "init": layer.init,
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "layer_index": layer.layer_index,
        "dropout": layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0,
        "a_trainable": layer.A.requires_grad,
        "b_trainable": layer.B.requires_grad,
        "base_offset": layer.base_offset_A is not None,
    }


def save_adapters(model: nn.Module, path: str | Path, values: dict[str, torch.Tensor] | None = None) -> Path:
    """Writes every LoRA layer's A and B (and base offsets), plus every other trainable
    parameter (tuned LayerNorms, a classifier head), to ``path`` (safetensors). Returns the path.

    ``values``: the trainable parameters whole, by ``named_parameters()`` name, where the model
    holds only shards of them (FSDP2: ``train.distributed.full_trainable_state``)."""
    from safetensors.torch import save_file

    from lorascope import __version__

    layers = lora_layers(model)
    lora_ids = {id(p) for layer in layers.values() for p in (layer.A, layer.B)}
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in lora_ids]
    if not layers and not extra:  # a head-only run has no LoRA but still something to save
        raise UsageError("the model has nothing to save: no LoRA layers and no trainable parameters")
    def whole(name: str, param: torch.Tensor) -> torch.Tensor:
        return values[name] if values is not None else param.detach()

    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        tensors[f"{name}.A"] = whole(f"{name}.A", layer.A)
        tensors[f"{name}.B"] = whole(f"{name}.B", layer.B)
        for key in _OFFSETS:
            if getattr(layer, key) is not None:
                tensors[f"{name}.{key}"] = getattr(layer, key)
    for name in extra:
        tensors[name] = whole(name, model.get_parameter(name))
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": str(ADAPTER_FORMAT_VERSION),
        "lorascope_version": __version__,
        "model_class": type(model).__name__,
        "modules": json.dumps([_layer_meta(n, layer) for n, layer in layers.items()]),
        "extra": json.dumps(extra),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to("cpu").contiguous() for k, v in tensors.items()}, str(path), metadata)
    return path


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UsageError(f"adapter file {path} does not exist; give the path save_adapters wrote")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{path} is not a readable safetensors file ({exc})") from None
    if metadata.get("format") != ADAPTER_FORMAT:
        raise UsageError(f"{path} is not a lorascope adapter file (no '{ADAPTER_FORMAT}' metadata)")
    if int(metadata.get("format_version", "0")) > ADAPTER_FORMAT_VERSION:
        raise UsageError(
            f"{path} has adapter format {metadata['format_version']}, newer than this lorascope "
            f"reads ({ADAPTER_FORMAT_VERSION}); upgrade lorascope"
        )
    return metadata, tensors


def _few(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _create_layers(model: nn.Module, entries: list[dict], path: Path) -> None:
    """Puts fresh LoRA layers where the file says, freezing everything else (as add_lora)."""
    modules = dict(model.named_modules())
    missing = [e["name"] for e in entries if e["name"] not in modules]
    if missing:
        raise UsageError(
            f"{path} holds adapters for modules this {type(model).__name__} does not have "
            f"({_few(missing)}); load it into the model it was trained on"
        )
    built = []
    for entry in entries:
        layer = LoRALinear(
            modules[entry["name"]], entry["rank"], entry["alpha"], entry["dropout"],
            rslora=entry["rslora"], layer_index=entry["layer_index"],
        )
        _check_layer(entry, layer, path)  # before the model is changed
        built.append((entry["name"], layer))
    for param in model.parameters():
        param.requires_grad_(False)
    for name, layer in built:
        replace_module(model, name, layer)


def _check_layer(entry: dict, layer: LoRALinear, path: Path) -> None:
    saved = (entry["rank"], entry["in_features"], entry["out_features"])
    have = (layer.rank, layer.in_features, layer.out_features)
    if saved != have:
        raise UsageError(
            f"{path}: {entry['name']} has rank {saved[0]} and shape ({saved[2]}, {saved[1]}) in the "
            f"file but rank {have[0]} and shape ({have[2]}, {have[1]}) in the model; "
            "use the same rank and model as the run that saved it"
        )
    if abs(entry["scaling"] - layer.scaling) > 1e-9 * max(1.0, abs(layer.scaling)):
        raise UsageError(
            f"{path}: {entry['name']} was saved with scaling {entry['scaling']:g} "
            f"(alpha {entry['alpha']:g}) but the model's layer has {layer.scaling:g}; "
            "use the same alpha (and rslora setting) as the run that saved it"
        )


def load_adapters(model: nn.Module, path: str | Path) -> dict[str, LoRALinear]:
    """Loads adapters saved by ``save_adapters``. If the model already has LoRA layers they must
    be the same modules with the same rank and scaling; if it has none they are created. Returns
    the LoRA layers by name."""
    path = Path(path)
    metadata, tensors = _read(path)
    entries = json.loads(metadata["modules"])
    extra = json.loads(metadata.get("extra", "[]"))
    if not lora_layers(model):
        _create_layers(model, entries, path)
    layers = lora_layers(model)
    saved_names = [e["name"] for e in entries]
    missing = [n for n in saved_names if n not in layers]
    unexpected = [n for n in layers if n not in set(saved_names)]
    if missing or unexpected:
        raise UsageError(
            f"{path} does not fit this model's LoRA layers: in the file only: "
            f"{_few(missing) or 'none'}; in the model only: {_few(unexpected) or 'none'}; "
            "add LoRA with the same targets and layers as the run that saved it"
        )
    params = dict(model.named_parameters())
    absent = [n for n in extra if n not in params]
    if absent:
        raise UsageError(f"{path} holds parameters this model lacks ({_few(absent)})")
    for entry in entries:
        _check_layer(entry, layers[entry["name"]], path)
    wrong = [n for n in extra if tuple(params[n].shape) != tuple(tensors[n].shape)]
    if wrong:
        raise UsageError(
            f"{path}: {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)} in the file but "
            f"{tuple(params[wrong[0]].shape)} in the model; load it into the model it was trained on"
        )
    with torch.no_grad():
        for entry in entries:
            name, layer = entry["name"], layers[entry["name"]]
            if entry["base_offset"]:
                layer.set_base_offset(tensors[f"{name}.base_offset_B"], tensors[f"{name}.base_offset_A"])
            else:
                layer.set_base_offset(None, None)
            layer.A.copy_(tensors[f"{name}.A"])
            layer.B.copy_(tensors[f"{name}.B"])
            layer.A.requires_grad_(entry["a_trainable"])
            layer.B.requires_grad_(entry["b_trainable"])
            layer.init = entry["init"]
        for name in extra:
            param = params[name]
            param.copy_(tensors[name])
            param.requires_grad_(True)
    return layers
