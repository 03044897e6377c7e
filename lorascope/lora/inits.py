"""LoRA initialisations, by name: the implementations of ``lorascope.lora.INITS``, whose names
and one-line descriptions are declared in the package's front door. Each takes the layer and the
LoraConfig and writes A and B (under ``torch.no_grad()``, from the pretrained base). Every init leaves the model's output at
step 0 equal to the pretrained model's: either one factor is zero, or the base is compensated
(``LoRALinear.compensate_base``: base = W - scaling * B0 @ A0).

Sources: ``kaiming_uniform`` is what loralib and PEFT do; ``kaiming_normal`` is the swap that
``000`` tried; ``gaussian`` with sigma = 1 is ``004``'s init; ``gaussian_b``, ``both_nonzero`` and
``gaussian_a_uniform_b`` are the B-side variants that ``000`` argued for; ``svd`` is PiSSA and
``003``'s SVD init.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from lorascope.config import LoraConfig
from lorascope.errors import UsageError
from lorascope.lora import INITS

__all__ = ["INITS", "Init", "KAIMING_A", "LoraFactors"]

# loralib and PEFT use a = sqrt(5), which makes A ~ U(-1/sqrt(in), 1/sqrt(in)) (variance 1/(3 in)).
KAIMING_A = math.sqrt(5)


class LoraFactors(Protocol):
    """What an init sees of a LoRA layer (``lorascope.lora.layer.LoRALinear`` is one): the
    inits depend on this, not on the layer's module, so the layer imports the inits and not
    the other way round."""

    A: nn.Parameter  # (rank, in)
    B: nn.Parameter  # (out, rank)
    rank: int
    scaling: float

    def pretrained_weight(self) -> torch.Tensor: ...
    def compensate_base(self) -> None: ...


@dataclass(frozen=True)
class Init:
    apply: Callable[["LoraFactors", "LoraConfig"], None]
    rewrites_base: bool = False  # True: the base weight is replaced by W - scaling * B0 @ A0


def _register(name: str, rewrites_base: bool = False):
    def decorator(fn: Callable[["LoraFactors", "LoraConfig"], None]):
        INITS.register(name)(Init(fn, rewrites_base))
        return fn

    return decorator


def _std(cfg: LoraConfig) -> float:
    if not cfg.init_std > 0:
        raise UsageError(
            f"lora.init_std must be greater than 0 for a gaussian init (got {cfg.init_std}); "
            "0.02 is a small choice, 1.0 a large one"
        )
    return cfg.init_std


@_register("kaiming_uniform")
def _kaiming_uniform(layer: LoraFactors, cfg: LoraConfig) -> None:
    nn.init.kaiming_uniform_(layer.A, a=KAIMING_A)
    layer.B.zero_()


# Same a = sqrt(5) as the uniform one, so both have variance 1/(3 in): comparing the two then
# changes the shape of A's distribution and nothing else.
@_register("kaiming_normal")
def _kaiming_normal(layer: LoraFactors, cfg: LoraConfig) -> None:
    nn.init.kaiming_normal_(layer.A, a=KAIMING_A)
    layer.B.zero_()


@_register("gaussian")
def _gaussian(layer: LoraFactors, cfg: LoraConfig) -> None:
    nn.init.normal_(layer.A, mean=0.0, std=_std(cfg))
    layer.B.zero_()


@_register("orthogonal")
def _orthogonal(layer: LoraFactors, cfg: LoraConfig) -> None:
    # For rank > in, rows cannot be orthonormal; torch then makes the columns orthonormal.
    nn.init.orthogonal_(layer.A)
    layer.B.zero_()


@_register("gaussian_b")
def _gaussian_b(layer: LoraFactors, cfg: LoraConfig) -> None:
    layer.A.zero_()
    nn.init.normal_(layer.B, mean=0.0, std=_std(cfg))


# Both factors non-zero would change the model's output at step 0. We compensate the base instead
# (as PiSSA does) so that runs with different inits start from the same function and differ only
# in where the optimiser starts in (A, B) space.
@_register("both_nonzero", rewrites_base=True)
def _both_nonzero(layer: LoraFactors, cfg: LoraConfig) -> None:
    nn.init.kaiming_uniform_(layer.A, a=KAIMING_A)
    nn.init.normal_(layer.B, mean=0.0, std=_std(cfg))
    layer.compensate_base()


@_register("gaussian_a_uniform_b", rewrites_base=True)
def _gaussian_a_uniform_b(layer: LoraFactors, cfg: LoraConfig) -> None:
    std = _std(cfg)
    nn.init.normal_(layer.A, mean=0.0, std=std)
    bound = math.sqrt(3.0) * std  # U(-b, b) has std b / sqrt(3)
    nn.init.uniform_(layer.B, -bound, bound)
    layer.compensate_base()


@_register("svd", rewrites_base=True)
def _svd(layer: LoraFactors, cfg: LoraConfig) -> None:
    weight = layer.pretrained_weight()  # (out, in), float32
    if layer.rank > min(weight.shape):
        raise UsageError(
            f"the svd init needs rank <= min(out, in) = {min(weight.shape)} (got {layer.rank}); "
            "lower --rank"
        )
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    # Split each singular value evenly between B and A, divided by the scaling so that
    # scaling * B @ A = U_r diag(S_r) Vh_r exactly whatever alpha is.
    root = torch.sqrt(S[: layer.rank] / layer.scaling)  # (r,)
    layer.B.copy_(U[:, : layer.rank] * root)  # (out, r)
    layer.A.copy_(root[:, None] * Vh[: layer.rank])  # (r, in)
    layer.compensate_base()
