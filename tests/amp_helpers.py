"""Shared pieces of the mixed-precision tests: the devices they run on (CUDA ones marked `gpu` and
skipped without a GPU, so `pytest -m gpu` runs exactly those), a tiny LoRA GPT-2, seeded batches,
and an injected fp16 overflow at a chosen micro-step."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.record_helpers import tiny_lora_gpt2

__all__ = ["DEVICES", "OverflowAt", "lm_batches", "lora_model", "reference_grads"]

_NO_CUDA = not torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA GPU")]),
]


def lm_batches(n: int, batch_size: int = 4, length: int = 12, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` causal-LM batches of random token ids over tiny-gpt2's 128-token vocabulary."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 128, (batch_size, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def lora_model(device: str, seed: int = 0) -> nn.Module:
    """tiny-gpt2 with lorascope LoRA (rank 4; A and B both non-zero, so both have a gradient
    from the first step), no dropout, in train mode on ``device``."""
    return tiny_lora_gpt2(rank=4, init="both_nonzero", seed=seed).to(device).train()


class OverflowAt(nn.Module):
    """Wraps a causal LM and multiplies its loss by ``factor`` on the chosen forward calls (counted
    from 1, one per micro-step). 1e6 is a real fp16 overflow: the loss stays finite in fp32, but
    its gradient times the loss scale exceeds float16's 65504 in the logits' backward, as a loss
    spike would. ``inf`` makes the loss itself infinite."""

    def __init__(self, model: nn.Module, calls: set[int], factor: float = 1e6) -> None:
        super().__init__()
        self.model, self.calls, self.factor, self.count = model, set(calls), factor, 0

    def forward(self, **batch):
        out = self.model(**batch)
        self.count += 1
        if self.count in self.calls:
            out.loss = out.loss * self.factor
        return out


def reference_grads(model: nn.Module, batch: dict[str, torch.Tensor], divide: int = 1) -> dict[str, torch.Tensor]:
    """The float32 gradients of the trainable parameters, by name, for ``loss / divide`` on
    ``batch``: plain autograd without autocast, scaler or recorder, what a recorded gradient
    must equal. LoRA's are named ``<module>.A`` and ``<module>.B``."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    device = named[0][1].device
    loss = model(**{k: v.to(device) for k, v in batch.items()}).loss / divide
    grads = torch.autograd.grad(loss, [p for _, p in named])
    return {name: g.detach().float().cpu() for (name, _), g in zip(named, grads)}
