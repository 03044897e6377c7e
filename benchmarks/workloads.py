"""The models the benchmarks train, by name: a GPT-2-small-shaped model and a ~1.1B-parameter
Llama (TinyLlama's shape) built from config (random weights, nothing downloaded), the embedded
default SmolLM2-135M when its converted cache exists, and a tiny GPT-2 and a tiny Llama for the
smoke tests. Each comes with lorascope's LoRA or with PEFT's on the same projections, rank and
alpha, so that two trainers see the same model, on a chosen device with the frozen base in a
chosen dtype (the LoRA factors stay float32 in both, as mixed-precision training wants).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lorascope.registry import Registry

__all__ = ["Workload", "WORKLOADS", "available_workloads", "build_workload", "PEFT_TARGETS"]


@dataclass
class Workload:
    name: str
    model: nn.Module
    vocab_size: int
    seq_len: int
    description: str


BaseBuilder = Callable[[], "tuple[nn.Module, int, str]"]  # (model, vocab size, description)

WORKLOADS: Registry[BaseBuilder] = Registry("benchmark model")
_AVAILABLE: dict[str, Callable[[], bool]] = {}

# The same projections as lorascope's roles "attn" + "mlp", spelled as PEFT's leaf-name targets.
# GPT-2's "c_proj" is both attn.c_proj and mlp.c_proj, as intended.
PEFT_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def _gpt2(**overrides) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(**overrides))


@WORKLOADS.register("gpt2-small")
def _gpt2_small() -> tuple[nn.Module, int, str]:
    model = _gpt2()  # GPT2Config() defaults: 12 blocks, hidden 768, vocab 50257
    return model, model.config.vocab_size, "GPT-2 small shape (12 × 768), random weights"


@WORKLOADS.register("smollm2-135m")
def _smollm2() -> tuple[nn.Module, int, str]:
    from lorascope.config import ModelConfig
    from lorascope.models import load_model

    model, tokenizer = load_model(ModelConfig(name="smollm2-135m"), task="causal_lm", num_labels=2)
    return model, model.config.vocab_size, "SmolLM2-135M-Instruct (30 × 576), the embedded default"


def _llama(**overrides) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**overrides))


@WORKLOADS.register("llama-1b")
def _llama_1b() -> tuple[nn.Module, int, str]:
    # TinyLlama-1.1B's shape: 22 blocks, hidden 2048, MLP 5632, 32 heads over 4 KV heads
    model = _llama(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                   num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
    return model, 32000, "Llama 1.1B (22 × 2048, TinyLlama's shape), random weights"


@WORKLOADS.register("tiny-llama")
def _tiny_llama() -> tuple[nn.Module, int, str]:
    model = _llama(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, vocab_size=128, max_position_embeddings=64)
    return model, 128, "tiny Llama (2 × 32), for the smoke test"


@WORKLOADS.register("tiny-gpt2")
def _tiny_gpt2() -> tuple[nn.Module, int, str]:
    model = _gpt2(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=128, bos_token_id=0, eos_token_id=0)
    return model, 128, "tiny GPT-2 (2 × 32), for the smoke test"


def _smollm2_cached() -> bool:
    """Loading the default model is only cheap once its GGUF conversion is cached; the benchmark
    never converts (that alone costs a minute of CPU)."""
    from lorascope.models.gguf_cache import cache_root

    return (cache_root() / "smollm2-135m-instruct-q4_1" / "config.json").is_file()


_AVAILABLE["smollm2-135m"] = _smollm2_cached


def available_workloads(names: list[str]) -> tuple[list[str], list[str]]:
    """(usable, skipped) among ``names``."""
    usable, skipped = [], []
    for name in names:
        WORKLOADS.get(name)  # an unknown name is an error, not a skip
        (usable if _AVAILABLE.get(name, lambda: True)() else skipped).append(name)
    return usable, skipped


def _family(model: nn.Module) -> str:
    return "gpt2" if model.config.model_type == "gpt2" else "llama"


def build_workload(name: str, *, lora: str = "lorascope", rank: int = 16, alpha: float = 32.0,
                   seq_len: int = 128, seed: int = 0, device: str = "cpu",
                   dtype: torch.dtype | None = None) -> Workload:
    """The model ``name`` with LoRA of ``rank`` on every attention and MLP projection of every
    block, from lorascope (``lora="lorascope"``) or PEFT (``lora="peft"``), dropout 0, in train
    mode, on ``device``, the frozen base in ``dtype`` (as built when None). The base weights are
    seeded, so both LoRA flavours start from the same model."""
    builder = WORKLOADS.get(name)
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it trains: 1B random weights are slow on a CPU
        model, vocab, description = builder()
    model.to(device=device, dtype=dtype)
    if lora == "lorascope":
        from lorascope.config import LoraConfig
        from lorascope.lora import add_lora

        add_lora(model, LoraConfig(rank=rank, alpha=alpha, dropout=0.0, targets=["attn", "mlp"], layers=":"))
    elif lora == "peft":
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        family = _family(model)
        config = PeftLoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=PEFT_TARGETS[family],
                                fan_in_fan_out=family == "gpt2", bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    else:
        raise ValueError(f"lora must be 'lorascope' or 'peft' (got {lora!r})")
    model.train()
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", seq_len)
    return Workload(name, model, vocab, min(seq_len, limit), description)
