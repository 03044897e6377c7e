"""Shared fixtures: tiny models built from configs (never downloaded), one thread for torch so
that the suite behaves the same on a busy 2-core machine."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_gpt2():
    """A 2-block GPT-2 (Conv1D projections) with random weights; seeded so tests are repeatable."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=128)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def tiny_llama():
    """A 2-block Llama (nn.Linear q/k/v/o and gate/up/down projections), like the default model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()
