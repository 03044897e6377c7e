"""The LoRA layer: a frozen linear map plus a trainable low-rank update,
``y = base(x) + scaling * dropout(x) @ A.T @ B.T``.

It wraps ``nn.Linear`` (weight stored (out, in)) and transformers' GPT-2 ``Conv1D`` (weight stored
(in, out)); ``base_weight()`` always answers (out, in), so nothing downstream guesses orientation.
"""
from __future__ import annotations

import functools
import math
import torch
import torch.nn.functional as F
from torch import nn

from lorascope.config import LoraConfig
from lorascope.errors import UsageError
from lorascope.lora.inits import INITS

__all__ = ["LoRALinear", "lora_layers", "is_adaptable", "features", "replace_module"]


@functools.cache
def _transposed_types() -> dict[type, bool]:
    """Adaptable module types -> whether their weight is stored (in, out)."""
    types: dict[type, bool] = {nn.Linear: False}
    try:  # transformers is optional for the layer itself; only GPT-2-style models need it
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency of the package
        return types
    types[Conv1D] = True
    return types


def _is_transposed(module: nn.Module) -> bool | None:
    """True for (in, out) weights, False for (out, in), None when LoRA cannot wrap the module."""
    for kind, transposed in _transposed_types().items():
        if isinstance(module, kind):
            return transposed
    return None


def features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an adaptable module, whatever its weight's layout."""
    transposed = _is_transposed(module)
    if transposed is None:
        raise UsageError(f"LoRA wraps nn.Linear and GPT-2's Conv1D, not {type(module).__name__}")
    n_out, n_in = module.weight.shape
    return (n_out, n_in) if transposed else (n_in, n_out)


def is_adaptable(module: nn.Module) -> bool:
    """Whether ``LoRALinear`` can wrap this module (``nn.Linear`` or GPT-2 ``Conv1D``)."""
    return _is_transposed(module) is not None


class LoRALinear(nn.Module):
    """A frozen ``base`` plus ``scaling * B @ A``. A: (rank, in), B: (out, rank).

    A and B are float32 master weights whatever the base's dtype, so that fp16/bf16 training
    updates them without rounding them away. ``.eval()`` never merges the update into the base:
    a snapshot taken in eval mode sees the same A and B as one taken in train mode.

    Inits that rewrite the base (SVD/PiSSA, the compensated non-zero inits) keep the base as
    ``W - scaling * base_offset_B @ base_offset_A`` and the two small factors as buffers, so
    ``pretrained_weight()`` can give W back and adapters can be moved between models.
    """

    def __init__(
        self,
        base: nn.Module,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        *,
        rslora: bool = False,
        layer_index: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(base, LoRALinear):
            raise UsageError(
                "this module already has LoRA; apply LoRA once per module (call add_lora once)"
            )
        transposed = _is_transposed(base)
        if transposed is None:
            raise UsageError(
                f"LoRA wraps nn.Linear and GPT-2's Conv1D, not {type(base).__name__}; "
                "choose linear projections as targets"
            )
        if int(rank) < 1:
            raise UsageError(f"LoRA rank must be at least 1 (got {rank})")
        if not alpha > 0:
            raise UsageError(f"LoRA alpha must be greater than 0 (got {alpha})")
        weight = base.weight
        self.base = base
        self._transposed = transposed
        self.in_features, self.out_features = (
            tuple(weight.shape) if transposed else tuple(weight.shape[::-1])
        )
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.rslora = bool(rslora)
        # rsLoRA (Kalajdzievski 2023) keeps the update's scale stable as the rank grows.
        self.scaling = self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)
        self.layer_index = layer_index
        self.init = ""
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": weight.device, "dtype": torch.float32}
        self.A = nn.Parameter(torch.zeros(self.rank, self.in_features, **factory))
        self.B = nn.Parameter(torch.zeros(self.out_features, self.rank, **factory))
        self.register_buffer("base_offset_A", None)
        self.register_buffer("base_offset_B", None)
        for param in base.parameters():
            param.requires_grad_(False)
        self.initialize("kaiming_uniform")

    # --- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        h = self.dropout(x)
        # Outside autocast a half-precision activation meets fp32 A: compute the update in fp32.
        # Under autocast, F.linear picks the autocast dtype itself, so no copy is made here.
        if not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.A.dtype)
        delta = F.linear(F.linear(h, self.A), self.B)  # (..., rank) -> (..., out)
        return out + (self.scaling * delta).to(out.dtype)

    # --- weights ------------------------------------------------------------------------------

    def base_weight(self) -> torch.Tensor:
        """The base's current weight as (out, in): a detached view, not a copy."""
        weight = self.base.weight.detach()
        return weight.T if self._transposed else weight

    def pretrained_weight(self) -> torch.Tensor:
        """The weight before any base-rewriting init, as a new float32 (out, in) tensor."""
        weight = self.base_weight().to(torch.float32, copy=True)
        if self.base_offset_A is not None:
            weight += self.scaling * (self.base_offset_B.float() @ self.base_offset_A.float())
        return weight

    def delta_weight(self) -> torch.Tensor:
        """The current update ``scaling * B @ A`` as a float32 (out, in) tensor."""
        return self.scaling * (self.B.detach() @ self.A.detach())

    def set_base_offset(self, B0: torch.Tensor | None, A0: torch.Tensor | None) -> None:
        """Makes the base ``W - scaling * B0 @ A0`` (W = the pretrained weight); None restores W."""
        with torch.no_grad():
            weight = self.pretrained_weight()
            if B0 is None or A0 is None:
                self.base_offset_A = self.base_offset_B = None
            else:
                A0 = A0.detach().to(device=weight.device, dtype=torch.float32).clone()
                B0 = B0.detach().to(device=weight.device, dtype=torch.float32).clone()
                weight -= self.scaling * (B0 @ A0)
                self.base_offset_A, self.base_offset_B = A0, B0
            self._write_base_weight(weight)

    def _write_base_weight(self, weight: torch.Tensor) -> None:
        """Writes an (out, in) weight into the base, in the base's layout and dtype."""
        target = self.base.weight
        with torch.no_grad():
            target.copy_((weight.T if self._transposed else weight).to(target.dtype))

    def merged_base(self) -> nn.Module:
        """The base module with the update folded in (W_base + scaling * B @ A), for export."""
        self._write_base_weight(self.base_weight().float() + self.delta_weight())
        return self.base

    def compensate_base(self) -> None:
        """Subtracts the current update from the base, so the layer's output equals the
        pretrained layer's: what a non-zero init needs to keep the model unchanged at step 0."""
        self.set_base_offset(self.B, self.A)

    def initialize(self, name: str, cfg: LoraConfig | None = None) -> None:
        """Re-initialises A and B with a registered init (``lorascope.lora.inits.INITS``), starting from
        the pretrained base, and records the init's name on the layer."""
        spec = INITS.get(name)
        cfg = cfg if cfg is not None else LoraConfig(rank=self.rank, alpha=self.alpha)
        if self.base_offset_A is not None:
            self.set_base_offset(None, None)
        with torch.no_grad():
            spec.apply(self, cfg)
        self.init = name

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g}, init={self.init!r}"
        )


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in the model, found by type, keyed by its ``named_modules()`` name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Puts ``new`` where ``model.get_submodule(name)`` was."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
