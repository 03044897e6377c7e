"""Shared pieces of the recorder tests: a tiny LoRA model and a deterministic little loop."""
from __future__ import annotations

import torch

from lorascope.config import LoraConfig


def tiny_lora_gpt2(rank: int = 4, init: str = "gaussian", seed: int = 0) -> torch.nn.Module:
    """A 2-block GPT-2 with lorascope LoRA on attention and MLP (B nonzero with gaussian init)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lorascope.lora import add_lora

    torch.manual_seed(seed)
    # no dropout: the tests replay forward passes and compare gradients
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=128,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    add_lora(model, LoraConfig(rank=rank, alpha=2.0 * rank, init=init))
    return model


def batch(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (2, 12), generator=g)


def train(model, optimizer, rec, steps: int, accum: int = 1, first: int = 1,
          on_weights=None) -> None:
    """Plain loop calling the hook protocol; ``on_weights(step)`` sees each step's weights."""
    micro = (first - 1) * accum
    for step in range(first, first + steps):
        for _ in range(accum):
            x = batch(micro)
            loss = model(input_ids=x, labels=x).loss / accum
            loss.backward()
            micro += 1
            rec.on_micro_step(micro)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rec.on_optimizer_step(step, {"loss": loss.item() * accum}, optimizer)
        if on_weights is not None:
            on_weights(step)


def lora_params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
