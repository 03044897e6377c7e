"""One tiny PEFT model per LoRA layer type, and PEFT's own ΔW for each adapted module: the
reference a recording must reproduce from the file alone.

The reference is PEFT's ``merge_and_unload`` on a float64 copy of the trained model (merged weight
minus base weight: exact up to float64 rounding, so the comparison measures the recording, not
float32 noise) for full-precision layers, and ``get_delta_weight`` for bitsandbytes layers, whose
``merge_and_unload`` re-quantises the merged weight and is itself off by several times ΔW."""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

VOCAB = 128


@dataclass
class Case:
    model: nn.Module
    quantised: bool = False  # reference through get_delta_weight
    batch: Callable[[int], dict[str, torch.Tensor]] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.batch is None:
            self.batch = token_batch


def token_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    return {"input_ids": ids, "labels": ids}


def image_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(2, 3, 8, 8, generator=g), "labels": torch.randint(0, 4, (2,), generator=g)}


class _Items(torch.utils.data.Dataset):
    """A batch function's first rows as a dataset, for the Trainer."""

    def __init__(self, batch, n: int) -> None:
        self.items = [{k: v[0] for k, v in batch(i).items()} for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)


def llama() -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(_llama_config())


def quantised_llama(bits: int, quant_type: str = "nf4") -> nn.Module:
    """A tiny Llama quantised by bitsandbytes on load (on the CPU): saved from its config to a
    temporary folder first, since quantisation happens while weights load."""
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    quant = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_compute_dtype=torch.float32)
             if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
    with tempfile.TemporaryDirectory() as folder:
        llama().save_pretrained(folder)
        return LlamaForCausalLM.from_pretrained(folder, quantization_config=quant, device_map="cpu",
                                                dtype=torch.float32)


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB))


class TinyConvNet(nn.Module):
    """Two convolutions and a head, returning a loss as transformers models do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, pixel_values, labels=None):
        x = torch.relu(self.conv2(torch.relu(self.conv1(pixel_values))))
        logits = self.head(x.mean(dim=(2, 3)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def _lora(**kwargs):
    import peft

    kwargs.setdefault("r", 4)
    kwargs.setdefault("lora_alpha", 8)
    return peft.LoraConfig(**kwargs)


def _peft(model, **kwargs):
    import peft

    return peft.get_peft_model(model, _lora(**kwargs))


def _two_adapters():
    model = _peft(llama(), target_modules=["q_proj", "v_proj"])  # adapter "default", inactive below
    model.add_adapter("second", _lora(r=2, lora_alpha=4, target_modules=["v_proj", "o_proj"]))
    model.set_adapter("second")
    return Case(model)


CASES: dict[str, Callable[[], Case]] = {
    "linear": lambda: Case(_peft(llama(), target_modules=["q_proj", "v_proj", "down_proj"])),
    "conv1d": lambda: Case(_peft(gpt2(), target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
    "embedding": lambda: Case(_peft(llama(), target_modules=["embed_tokens", "q_proj"])),
    "dora": lambda: Case(_peft(llama(), target_modules=["q_proj", "v_proj", "embed_tokens"], use_dora=True)),
    "dora_conv1d": lambda: Case(_peft(gpt2(), target_modules=["c_attn"], fan_in_fan_out=True, use_dora=True)),
    "rslora": lambda: Case(_peft(llama(), target_modules=["q_proj", "v_proj"], r=8, lora_alpha=4, use_rslora=True)),
    "two_adapters": _two_adapters,
    "conv2d": lambda: Case(_peft(TinyConvNet(), target_modules=["conv1", "conv2"]), batch=image_batch),
    "conv2d_dora": lambda: Case(_peft(TinyConvNet(), target_modules=["conv1", "conv2"], use_dora=True),
                                batch=image_batch),
    "qlora_nf4": lambda: Case(_peft(quantised_llama(4, "nf4"), target_modules=["q_proj", "v_proj"]), quantised=True),
    "qlora_fp4": lambda: Case(_peft(quantised_llama(4, "fp4"), target_modules=["q_proj", "v_proj"]), quantised=True),
    "lora_8bit": lambda: Case(_peft(quantised_llama(8), target_modules=["q_proj", "v_proj"]), quantised=True),
    # four 4-bit layers and one full-precision lm_head: none may be dropped
    "mixed_4bit": lambda: Case(_peft(quantised_llama(4), target_modules=["q_proj", "v_proj", "lm_head"]),
                               quantised=True),
}
QUANTISED = {name for name in CASES if "bit" in name or name.startswith("qlora")}


def _out_in(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as (out, in): GPT-2's Conv1D stores (in, out), a kernel is flattened."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return weight.T
    return weight.flatten(1) if weight.ndim > 2 else weight


def peft_deltas(model: nn.Module, names: list[str], quantised: bool) -> dict[str, np.ndarray]:
    """PEFT's ΔW (float64, (out, in)) of each named LoRA layer of the trained ``model``."""
    if quantised:
        out = {}
        for name in names:
            layer = model.get_submodule(name)
            (adapter,) = [a for a in layer.active_adapters if a in layer.r]
            out[name] = _out_in(layer.get_base_layer(), layer.get_delta_weight(adapter).detach()).double().numpy()
        return out
    base = {name: _out_in(model.get_submodule(name).get_base_layer(),
                          model.get_submodule(name).get_base_layer().weight.detach().double()) for name in names}
    merged = copy.deepcopy(model).double().merge_and_unload()
    out = {}
    for name in names:
        module = merged.get_submodule(name.removeprefix("base_model.model."))
        out[name] = (_out_in(module, module.weight.detach()) - base[name]).numpy()
    return out


def relative_error(recorded: np.ndarray, reference: np.ndarray) -> float:
    """max |recorded − reference| / max |reference|."""
    return float(np.abs(recorded.astype(np.float64) - reference).max() / np.abs(reference).max())


def output_difference_error(layer: nn.Module, delta_w: np.ndarray, seed: int = 0) -> float:
    """A quantised layer's own output difference layer(x) − base_layer(x) against x @ ΔWᵀ from
    the recording (dropout off: the layer in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, delta_w.shape[1], generator=g)
    was_training = layer.training
    layer.eval()
    with torch.no_grad():
        observed = (layer(x) - layer.get_base_layer()(x)).double().numpy()
    layer.train(was_training)
    return relative_error(x.double().numpy() @ delta_w.astype(np.float64).T, observed)
