"""Which modules get LoRA: roles ("attn", "mlp", "q", ..., "down"), glob patterns over module
names ("*.c_fc"), bare leaf names ("c_fc", "lm_head"), and a range of blocks ("-2:", "0,3,5")."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from lorascope.errors import UsageError
from lorascope.lora.layer import LoRALinear, is_adaptable
from lorascope.lora.roles import ROLES

__all__ = ["ROLES", "Target", "Selection", "select_targets", "parse_layers", "block_index"]

_ROLE_RE = {role: re.compile(rf"(?:^|\.)(?:{'|'.join(pats)})$") for role, pats in ROLES.items()}
_GLOB_CHARS = set("*?[.")


@dataclass(frozen=True)
class Target:
    name: str  # model.named_modules() name, verbatim
    module: nn.Module
    layer_index: int | None  # block index, None outside the blocks (lm_head, classifier, ...)


@dataclass(frozen=True)
class Selection:
    targets: list[Target]
    blocks: list[int]  # the block indices that the layer range selected


def block_index(name: str) -> int | None:
    """The block a module belongs to: the first all-digit part of its name."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def parse_layers(spec: str, blocks: list[int]) -> list[int]:
    """Applies a slice ("-2:", ":", "1:3") or a list ("0,3,5", "-1") to the model's blocks."""
    spec = spec.strip()
    n = len(blocks)
    if spec in ("", ":", "all"):
        return list(blocks)
    if n == 0:
        raise UsageError(
            f"lora.layers (--layers) is {spec!r} but this model has no numbered blocks; use ':'"
        )
    fix = "use a slice such as '-2:' (the last two blocks) or a list such as '0,3,5'"
    try:
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) > 3:
                raise ValueError
            bounds = [int(p) if p.strip() else None for p in parts]
            chosen = blocks[slice(*bounds)]
        else:
            positions = [int(p) for p in spec.split(",") if p.strip()]
            bad = [p for p in positions if not -n <= p < n]
            if bad:
                raise UsageError(
                    f"lora.layers (--layers) names block(s) {bad}, but the model has {n} blocks "
                    f"({blocks[0]}..{blocks[-1]}); {fix}"
                )
            chosen = sorted({blocks[p] for p in positions})
    except ValueError as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"lora.layers (--layers) {spec!r} is not understood; {fix}") from None
    if not chosen:
        raise UsageError(
            f"lora.layers (--layers) {spec!r} selects no block of the {n} blocks "
            f"({blocks[0]}..{blocks[-1]}); {fix}"
        )
    return chosen


def _matcher(target: str) -> Callable[[str], bool]:
    if target in _ROLE_RE:
        return _ROLE_RE[target].search
    if _GLOB_CHARS & set(target):
        return lambda name: fnmatch.fnmatchcase(name, target)
    # A bare word is a leaf name, as PEFT's target_modules: "c_fc", "lm_head", "classifier".
    return lambda name: name.rsplit(".", 1)[-1] == target


def _examples(names: list[str], limit: int = 8) -> str:
    """A few module names, with block numbers folded ("transformer.h.N.attn.c_attn")."""
    seen: list[str] = []
    for name in names:
        folded = ".".join("N" if p.isdigit() else p for p in name.split("."))
        if folded not in seen:
            seen.append(folded)
    more = ", ..." if len(seen) > limit else ""
    return ", ".join(seen[:limit]) + more


def _no_match(target: str, model: nn.Module, names: list[str]) -> UsageError:
    hint = ""
    if target in ("q", "k", "v") and any(_ROLE_RE["qkv"].search(n) for n in names):
        hint = " This model fuses q, k and v into one projection: use the role 'qkv' or 'attn'."
    return UsageError(
        f"LoRA target {target!r} matches no linear module of {type(model).__name__}; "
        f"give a role ({', '.join(ROLES)}) or a module-name pattern. Its linear modules "
        f"include: {_examples(names)}.{hint}"
    )


def select_targets(model: nn.Module, targets: list[str], layers: str = ":") -> Selection:
    """The modules that LoRA should wrap, in model order. Refuses targets that match nothing
    and modules that already carry LoRA."""
    targets = [t.strip() for t in targets if t.strip()]
    if not targets:
        raise UsageError("lora.targets (--targets) is empty; give roles such as attn,mlp")
    wrapped = {name for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    candidates: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent in wrapped:  # the frozen base inside a LoRALinear is not a target of its own
            continue
        if isinstance(module, LoRALinear) or is_adaptable(module):
            candidates.append((name, module))
    names = [name for name, _ in candidates]

    chosen: dict[str, nn.Module] = {}
    for target in targets:
        match = _matcher(target)
        hits = [(n, m) for n, m in candidates if match(n)]
        if not hits:
            raise _no_match(target, model, names)
        chosen.update(hits)
    blocks = sorted({i for i in map(block_index, names) if i is not None})
    selected = parse_layers(layers, blocks)
    keep = set(selected)
    found = [
        Target(name, module, block_index(name))
        for name, module in candidates
        if name in chosen and (block_index(name) is None or block_index(name) in keep)
    ]
    if not found:
        raise UsageError(
            f"LoRA targets {', '.join(targets)} match no module in blocks {selected}; "
            "widen lora.layers (--layers) or choose other targets"
        )
    already = [t.name for t in found if isinstance(t.module, LoRALinear)]
    if already:
        more = f" (and {len(already) - 1} more)" if len(already) > 1 else ""
        raise UsageError(
            f"{already[0]} already has LoRA{more}; LoRA is applied once per module: call "
            "add_lora once, or choose targets that are not adapted yet"
        )
    return Selection(found, selected)
