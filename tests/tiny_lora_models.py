"""Small models with known parameter counts for the optimizer, schedule and model-report tests.
Their LoRA pairs are lorascope's own LoRALinear, so they are found the way every model's are."""
from __future__ import annotations

import torch
from torch import nn


def TinyLoRA(in_features: int = 6, out_features: int = 4, rank: int = 2) -> nn.Module:
    """A frozen Linear plus scaling * B @ A (scaling 1). B is small but non-zero so A gets a
    gradient at step 0."""
    from lorascope.lora import LoRALinear

    layer = LoRALinear(nn.Linear(in_features, out_features), rank=rank, alpha=float(rank))
    with torch.no_grad():
        layer.A.copy_(torch.randn(rank, in_features) * 0.5)  # (rank, in)
        layer.B.copy_(torch.randn(out_features, rank) * 0.1)  # (out, rank)
    return layer


class TinyNet(nn.Module):
    """LoRA layer (6 -> 4, rank 2), a trainable LayerNorm(4), a trainable head (4 -> 2).

    Parameters: base 6*4+4 = 28 (frozen), A 12, B 8, norm 8, head 10 -> total 66, trainable 38,
    LoRA 20. The names are chosen to mislead a name-based search: the head's weight sits in a
    module called ``lora_B`` and must still count as "other"."""

    def __init__(self) -> None:
        super().__init__()
        self.lora = TinyLoRA()
        self.norm = nn.LayerNorm(4)
        self.lora_B = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.norm(self.lora(x)))


def quadratic_problem(seed: int = 0) -> tuple[TinyNet, torch.Tensor, torch.Tensor]:
    """A TinyNet, inputs and reachable targets: the MSE loss to them is a smooth bowl near its
    minimum, so any working optimizer lowers it."""
    torch.manual_seed(seed)
    net = TinyNet()
    x = torch.randn(16, 6)
    y = torch.randn(16, 2) * 0.5
    return net, x, y


def mse(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((net(x) - y) ** 2).mean()
