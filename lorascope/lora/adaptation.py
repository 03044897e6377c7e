"""LoRA on a whole model: ``add_lora`` wraps the chosen projections in ``LoRALinear`` and freezes
the rest, ``lora_parameters`` and ``count_parameters`` say what trains, ``merge_lora`` folds the
adapters back, ``norm_modules`` finds the LayerNorms a run may also train."""
from __future__ import annotations

from torch import nn

from lorascope.config import LoraConfig
from lorascope.errors import UsageError
from lorascope.lora import INITS
from lorascope.lora.layer import LoRALinear, features, lora_layers, replace_module
from lorascope.lora.targets import block_index, select_targets

__all__ = ["add_lora", "lora_parameters", "count_parameters", "merge_lora", "norm_modules"]


def _is_norm(module: nn.Module) -> bool:
    # Llama's RMSNorm (and many others) are plain nn.Modules, so the class name is the type test.
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    return type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def norm_modules(model: nn.Module, blocks: list[int] | None = None) -> dict[str, nn.Module]:
    """LayerNorm/RMSNorm modules inside the given blocks (all blocks when None). Norms outside
    the blocks (embeddings' LayerNorm, the final ln_f/norm) are never included."""
    chosen = None if blocks is None else set(blocks)
    found = {}
    for name, module in model.named_modules():
        index = block_index(name)
        if index is None or not _is_norm(module):
            continue
        if chosen is None or index in chosen:
            found[name] = module
    return found


def _tied_weights(model: nn.Module) -> set[int]:
    """ids of parameters that appear under more than one name (e.g. GPT-2's lm_head and wte)."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def add_lora(model: nn.Module, cfg: LoraConfig) -> dict[str, LoRALinear]:
    """Wraps the targeted projections of the selected blocks in ``LoRALinear`` (in place),
    freezes every other parameter, and returns the new layers by module name.

    ``cfg.freeze_a`` (LoRA-FA) freezes A; ``cfg.rslora`` scales by alpha/sqrt(rank);
    ``cfg.train_layernorm`` makes the LayerNorm/RMSNorm modules of the selected blocks trainable.
    """
    spec = INITS.get(cfg.init)  # an unknown init is refused before the model is touched
    selection = select_targets(model, list(cfg.targets), cfg.layers)
    narrow = [(t.name, features(t.module)) for t in selection.targets if cfg.rank > min(features(t.module))]
    if narrow:
        name, (n_in, n_out) = narrow[0]
        raise UsageError(
            f"lora.rank (--rank) {cfg.rank} is above the width of {name} ({n_in} -> {n_out}"
            f"{f', and {len(narrow) - 1} more modules' if len(narrow) > 1 else ''}): its update B @ A "
            f"cannot have a rank above {min(n_in, n_out)}; use --rank {min(n_in, n_out)} or less, "
            "or leave the narrow modules out of lora.targets"
        )
    if spec.rewrites_base:
        tied = _tied_weights(model)
        shared = [t.name for t in selection.targets if id(t.module.weight) in tied]
        if shared:
            raise UsageError(
                f"the {cfg.init} init rewrites the base weight, but {shared[0]} shares its weight "
                "with another module (tied embeddings); leave it out of lora.targets"
            )

    # Freeze everything that is not already LoRA (a second add_lora on other modules keeps the
    # first call's adapters as they were).
    keep = {id(p) for layer in lora_layers(model).values() for p in (layer.A, layer.B)}
    for param in model.parameters():
        if id(param) not in keep:
            param.requires_grad_(False)

    added: dict[str, LoRALinear] = {}
    for target in selection.targets:
        layer = LoRALinear(
            target.module, cfg.rank, cfg.alpha, cfg.dropout,
            rslora=cfg.rslora, layer_index=target.layer_index,
        )
        layer.initialize(cfg.init, cfg)
        layer.A.requires_grad_(not cfg.freeze_a)
        replace_module(model, target.name, layer)
        added[target.name] = layer

    if cfg.train_layernorm:
        for norm in norm_modules(model, selection.blocks).values():
            for param in norm.parameters():
                param.requires_grad_(True)
    return added


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """A and B of every LoRA layer, in model order (A before B), frozen ones included: filter on
    ``requires_grad`` to build an optimizer."""
    return [p for layer in lora_layers(model).values() for p in (layer.A, layer.B)]


def count_parameters(model: nn.Module) -> dict:
    """Parameter counts (tied parameters once): ``total``, ``trainable``, ``lora`` (all A and B),
    ``lora_trainable``, ``other_trainable`` (e.g. LayerNorms, a classifier head), ``per_module``
    (LoRA parameters per adapted module), and ``weights_bytes``/``trainable_bytes``."""
    params = list(model.parameters())  # de-duplicated by torch
    layers = lora_layers(model)
    lora_ids = {id(p) for layer in layers.values() for p in (layer.A, layer.B)}
    trainable = [p for p in params if p.requires_grad]
    lora_trainable = sum(p.numel() for p in trainable if id(p) in lora_ids)
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in trainable),
        "lora": sum(layer.A.numel() + layer.B.numel() for layer in layers.values()),
        "lora_trainable": lora_trainable,
        "other_trainable": sum(p.numel() for p in trainable if id(p) not in lora_ids),
        "per_module": {name: layer.A.numel() + layer.B.numel() for name, layer in layers.items()},
        "weights_bytes": sum(p.numel() * p.element_size() for p in params),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
    }


def merge_lora(model: nn.Module) -> nn.Module:
    """Replaces every LoRA layer by its base with the update folded in (W_base + scaling*B@A), in
    place; the result has no adapters left. For export or fast inference, never for recording."""
    for name, layer in lora_layers(model).items():
        replace_module(model, name, layer.merged_base())
    return model
