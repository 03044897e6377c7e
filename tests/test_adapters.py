"""Adapter files: save -> load gives the same model, with and without LoRA already in place,
including base-rewriting inits and tuned LayerNorms; mismatches are refused with a sentence."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lorascope.config import LoraConfig
from lorascope.errors import UsageError
from lorascope.lora import add_lora, load_adapters, lora_layers, save_adapters


def _ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))


def _train_a_little(model) -> None:
    """Stands in for training: moves every trainable parameter."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids()).logits


@pytest.mark.parametrize("init", ["kaiming_uniform", "svd", "both_nonzero"])
def test_round_trip_into_a_model_with_the_same_lora(tiny_gpt2, tmp_path, init):
    pristine = copy.deepcopy(tiny_gpt2)
    cfg = LoraConfig(rank=4, init=init, layers="-1:", train_layernorm=True)
    add_lora(tiny_gpt2, cfg)
    _train_a_little(tiny_gpt2)
    expected = _logits(tiny_gpt2)
    path = save_adapters(tiny_gpt2, tmp_path / "run.adapters.safetensors")

    torch.manual_seed(123)  # a different init draw: loading must overwrite it
    add_lora(pristine, cfg)
    assert not torch.allclose(_logits(pristine), expected)
    layers = load_adapters(pristine, path)
    torch.testing.assert_close(_logits(pristine), expected, atol=1e-5, rtol=1e-5)
    assert all(layer.init == init for layer in layers.values())
    for name, layer in lora_layers(tiny_gpt2).items():
        torch.testing.assert_close(layers[name].pretrained_weight(), layer.pretrained_weight(), atol=1e-6, rtol=0)


def test_load_into_a_plain_model_creates_the_layers(tiny_llama, tmp_path):
    pristine = copy.deepcopy(tiny_llama)
    add_lora(tiny_llama, LoraConfig(rank=2, alpha=4, rslora=True, freeze_a=True, init="svd", targets=["q", "v"]))
    _train_a_little(tiny_llama)
    path = save_adapters(tiny_llama, tmp_path / "a.safetensors")

    layers = load_adapters(pristine, path)
    assert list(layers) == list(lora_layers(tiny_llama))
    torch.testing.assert_close(_logits(pristine), _logits(tiny_llama), atol=1e-5, rtol=1e-5)
    for name, layer in layers.items():
        original = lora_layers(tiny_llama)[name]
        assert (layer.rank, layer.scaling, layer.layer_index) == (2, original.scaling, original.layer_index)
        assert not layer.A.requires_grad and layer.B.requires_grad  # LoRA-FA survives the trip
    trainable = [n for n, p in pristine.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in tiny_llama.named_parameters() if p.requires_grad]


def test_file_metadata_describes_the_adapters(tiny_gpt2, tmp_path):
    add_lora(tiny_gpt2, LoraConfig(rank=4, alpha=8, init="gaussian", init_std=1.0, layers="0"))
    path = save_adapters(tiny_gpt2, tmp_path / "x.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        keys = set(handle.keys())
    modules = json.loads(meta["modules"])
    assert [m["name"] for m in modules] == list(lora_layers(tiny_gpt2))
    assert {(m["rank"], m["alpha"], m["scaling"], m["init"]) for m in modules} == {(4, 8.0, 2.0, "gaussian")}
    assert keys == {f"{m['name']}.{x}" for m in modules for x in ("A", "B")}


def test_head_only_runs_save_their_head(tiny_gpt2, tmp_path):
    for param in tiny_gpt2.parameters():
        param.requires_grad_(False)
    tiny_gpt2.transformer.ln_f.weight.requires_grad_(True)
    _train_a_little(tiny_gpt2)
    path = save_adapters(tiny_gpt2, tmp_path / "head.safetensors")
    fresh = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        fresh.transformer.ln_f.weight.fill_(1.0)
    load_adapters(fresh, path)
    torch.testing.assert_close(fresh.transformer.ln_f.weight, tiny_gpt2.transformer.ln_f.weight)


def test_nothing_to_save_is_refused(tiny_gpt2, tmp_path):
    for param in tiny_gpt2.parameters():
        param.requires_grad_(False)
    with pytest.raises(UsageError, match="nothing to save"):
        save_adapters(tiny_gpt2, tmp_path / "x.safetensors")


@pytest.fixture
def saved(tiny_gpt2, tmp_path):
    add_lora(tiny_gpt2, LoraConfig(rank=4, alpha=8, layers="-1:"))
    return save_adapters(tiny_gpt2, tmp_path / "saved.safetensors")


@pytest.mark.parametrize("cfg, message", [
    (LoraConfig(rank=8, alpha=16, layers="-1:"), "rank 4 .* but rank 8"),
    (LoraConfig(rank=4, alpha=4, layers="-1:"), "scaling"),
    (LoraConfig(rank=4, alpha=8, layers="0"), "in the file only"),
    (LoraConfig(rank=4, alpha=8, targets=["attn"], layers="-1:"), "in the file only"),
])
def test_mismatched_lora_is_refused(saved, cfg, message):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=128))
    add_lora(model, cfg)
    with pytest.raises(UsageError, match=message):
        load_adapters(model, saved)


def test_other_architectures_are_refused(saved, tiny_llama):
    with pytest.raises(UsageError, match="does not have"):
        load_adapters(tiny_llama, saved)
    assert not lora_layers(tiny_llama)  # refused before the model changed


def test_other_widths_are_refused_before_the_model_changes(saved):
    from transformers import GPT2Config, GPT2LMHeadModel

    wider = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=64, vocab_size=128))
    with pytest.raises(UsageError, match="shape"):
        load_adapters(wider, saved)
    assert not lora_layers(wider)


def test_bad_files_are_refused(tiny_gpt2, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_adapters(tiny_gpt2, tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(UsageError, match="not a lorascope adapter file"):
        load_adapters(tiny_gpt2, other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(UsageError, match="not a readable safetensors file"):
        load_adapters(tiny_gpt2, junk)
