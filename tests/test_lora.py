"""LoRALinear (both weight layouts, precision, dropout, eval), target selection on GPT-2, Llama,
BERT and DistilBERT, freezing, LoRA-FA, rsLoRA, LayerNorm tuning, counting and merging."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorascope.config import LoraConfig
from lorascope.errors import UsageError
from lorascope.lora import (
    LoRALinear,
    add_lora,
    count_parameters,
    lora_layers,
    lora_parameters,
    merge_lora,
    norm_modules,
)
from lorascope.lora.targets import block_index, parse_layers


@pytest.fixture
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=3, hidden_size=32, intermediate_size=64,
                        num_attention_heads=2, vocab_size=100, max_position_embeddings=64)
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(n_layers=2, dim=32, hidden_dim=64, n_heads=2, vocab_size=100,
                              max_position_embeddings=64)
    return DistilBertForSequenceClassification(config).eval()


def _ids(n: int = 10) -> torch.Tensor:
    return torch.randint(0, 100, (2, n), generator=torch.Generator().manual_seed(0))


def _nonzero(layer: LoRALinear, std: float = 0.3) -> None:
    with torch.no_grad():
        layer.A.normal_(0, std)
        layer.B.normal_(0, std)


# --- the layer ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_equals_explicit_low_rank_update(kind):
    torch.manual_seed(0)
    base = nn.Linear(12, 20) if kind == "linear" else Conv1D(20, 12)  # Conv1D(nf=out, nx=in)
    layer = LoRALinear(base, rank=3, alpha=6)
    _nonzero(layer)
    assert (layer.in_features, layer.out_features) == (12, 20)
    assert layer.A.shape == (3, 12) and layer.B.shape == (20, 3)
    W = base.weight.detach() if kind == "linear" else base.weight.detach().T  # (out, in)
    torch.testing.assert_close(layer.base_weight(), W)
    x = torch.randn(4, 5, 12)
    expected = x @ W.T + base.bias.detach() + x @ (2.0 * layer.B.detach() @ layer.A.detach()).T
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x) - base(x), x @ layer.delta_weight().T, atol=1e-5, rtol=1e-5)


def test_zero_b_leaves_outputs_unchanged(tiny_gpt2):
    ids = _ids()
    with torch.no_grad():
        before = tiny_gpt2(ids).logits
    layers = add_lora(tiny_gpt2, LoraConfig(rank=4, alpha=8))
    assert all(torch.count_nonzero(layer.B) == 0 for layer in layers.values())
    assert all(torch.count_nonzero(layer.A) > 0 for layer in layers.values())
    with torch.no_grad():
        torch.testing.assert_close(tiny_gpt2(ids).logits, before, atol=0, rtol=0)


def test_eval_does_not_merge_and_disables_dropout():
    torch.manual_seed(0)
    base = nn.Linear(16, 16)
    W = base.weight.detach().clone()
    layer = LoRALinear(base, rank=4, alpha=4, dropout=0.5)
    _nonzero(layer)
    A, B = layer.A.detach().clone(), layer.B.detach().clone()
    x = torch.randn(64, 16)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))  # dropout on the LoRA path
    layer.eval()
    torch.testing.assert_close(layer.base.weight, W, atol=0, rtol=0)
    assert torch.equal(layer.A, A) and torch.equal(layer.B, B)
    torch.testing.assert_close(layer(x), base(x) + x @ layer.delta_weight().T, atol=1e-5, rtol=1e-5)


def test_dropout_only_touches_the_lora_path():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    layer = LoRALinear(base, rank=2, alpha=2, dropout=0.999).train()  # nearly everything dropped
    with torch.no_grad():
        layer.B.fill_(1.0)
    x = torch.randn(4, 8)
    torch.manual_seed(0)
    mask = torch.nn.functional.dropout(torch.ones_like(x), 0.999)
    torch.manual_seed(0)
    torch.testing.assert_close(layer(x), base(x) + (x * mask) @ layer.delta_weight().T, atol=1e-4, rtol=1e-4)


def test_lora_weights_stay_fp32_on_a_half_precision_base():
    torch.manual_seed(0)
    base = nn.Linear(16, 8).to(torch.bfloat16)
    layer = LoRALinear(base, rank=4, alpha=8)
    _nonzero(layer)
    assert layer.A.dtype == layer.B.dtype == torch.float32
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = base(x).float() + x.float() @ layer.delta_weight().T
    torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert layer.A.grad.dtype == torch.float32 and layer.B.grad.dtype == torch.float32
    assert base.weight.grad is None


def test_autocast_bf16_on_cpu_keeps_fp32_master_weights(tiny_llama):
    add_lora(tiny_llama, LoraConfig(rank=4))
    tiny_llama.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tiny_llama(_ids(), labels=_ids()).loss
    loss.backward()
    for layer in lora_layers(tiny_llama).values():
        assert layer.A.dtype == torch.float32 and layer.B.grad.dtype == torch.float32
    assert any(torch.count_nonzero(layer.B.grad) for layer in lora_layers(tiny_llama).values())


def test_lora_cannot_wrap_twice_or_wrap_other_modules():
    layer = LoRALinear(nn.Linear(4, 4), rank=2)
    with pytest.raises(UsageError, match="already has LoRA"):
        LoRALinear(layer, rank=2)
    with pytest.raises(UsageError, match="nn.Linear"):
        LoRALinear(nn.Embedding(4, 4), rank=2)
    with pytest.raises(UsageError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0)


def test_add_lora_twice_is_refused(tiny_gpt2):
    add_lora(tiny_gpt2, LoraConfig(layers="-1:"))
    with pytest.raises(UsageError, match="already has LoRA"):
        add_lora(tiny_gpt2, LoraConfig())
    assert len(lora_layers(tiny_gpt2)) == 4  # nothing stacked, nothing added
    assert not any(isinstance(m.base, LoRALinear) for m in lora_layers(tiny_gpt2).values())
    # other blocks can still be adapted in a second call; the first call's adapters keep training
    add_lora(tiny_gpt2, LoraConfig(layers="0"))
    assert len(lora_layers(tiny_gpt2)) == 8
    assert all(layer.B.requires_grad for layer in lora_layers(tiny_gpt2).values())


# --- target selection -----------------------------------------------------------------------

def _names(model, **cfg) -> list[str]:
    return list(add_lora(model, LoraConfig(**cfg)))


def test_gpt2_roles_and_layers(tiny_gpt2):
    import copy

    m = lambda: copy.deepcopy(tiny_gpt2)  # noqa: E731
    assert _names(m(), targets=["attn"], layers="-1:") == [
        "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    assert _names(m(), targets=["mlp"], layers="0") == [
        "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert _names(m(), targets=["qkv", "down"]) == [
        "transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj",
        "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj"]
    assert _names(m(), targets=["*.c_fc"]) == _names(m(), targets=["c_fc"]) == [
        "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    assert _names(m(), targets=["transformer.h.1.attn.c_proj"]) == ["transformer.h.1.attn.c_proj"]
    layers = add_lora(m(), LoraConfig(targets=["attn", "mlp"], layers="-2:"))
    assert len(layers) == 8
    assert [layer.layer_index for layer in layers.values()] == [0] * 4 + [1] * 4


def test_gpt2_fused_qkv_gets_a_hint(tiny_gpt2):
    with pytest.raises(UsageError, match="'qkv' or 'attn'") as err:
        add_lora(tiny_gpt2, LoraConfig(targets=["q"]))
    assert "transformer.h.N.attn.c_attn" in str(err.value)


def test_llama_roles(tiny_llama):
    import copy

    m = lambda: copy.deepcopy(tiny_llama)  # noqa: E731
    leaf = lambda names: [n.rsplit(".", 1)[-1] for n in names]  # noqa: E731
    assert leaf(_names(m(), targets=["attn"], layers="-1:")) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert leaf(_names(m(), targets=["mlp"], layers="-1:")) == ["gate_proj", "up_proj", "down_proj"]
    assert _names(m(), targets=["q", "v"]) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert leaf(_names(m(), targets=["gate", "up", "down", "k", "o"], layers="0")) == [
        "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_bert_roles_tell_mlp_output_from_attention_output(tiny_bert):
    import copy

    names = _names(copy.deepcopy(tiny_bert), targets=["attn", "mlp"], layers="1")
    assert names == [f"bert.encoder.layer.1.{s}" for s in (
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense")]
    assert _names(copy.deepcopy(tiny_bert), targets=["down"], layers="-1:") == [
        "bert.encoder.layer.2.output.dense"]
    assert _names(copy.deepcopy(tiny_bert), targets=["o"], layers="0,2") == [
        "bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.2.attention.output.dense"]
    # the pooler and classifier are no role's; they are reachable by name
    assert _names(copy.deepcopy(tiny_bert), targets=["classifier"], rank=2) == ["classifier"]  # 2 labels wide


def test_distilbert_roles(tiny_distilbert):
    names = _names(tiny_distilbert, targets=["q", "k", "v", "o", "up", "down"], layers="-1:")
    assert [n.rsplit(".", 1)[-1] for n in names] == ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"]


def test_classifier_forward_with_lora(tiny_bert):
    ids = _ids()
    with torch.no_grad():
        before = tiny_bert(ids).logits
    add_lora(tiny_bert, LoraConfig(targets=["q", "v"], rank=2))
    with torch.no_grad():
        torch.testing.assert_close(tiny_bert(ids).logits, before, atol=0, rtol=0)


@pytest.mark.parametrize("targets, message", [
    (["atn"], "matches no linear module"),
    (["*.nothing"], "matches no linear module"),
    ([], "empty"),
])
def test_bad_targets_list_real_module_names(tiny_llama, targets, message):
    with pytest.raises(UsageError, match=message) as err:
        add_lora(tiny_llama, LoraConfig(targets=targets))
    if targets:
        assert "model.layers.N.self_attn.q_proj" in str(err.value)
    assert not lora_layers(tiny_llama)


@pytest.mark.parametrize("spec, expected", [
    (":", [0, 1, 2, 3]), ("", [0, 1, 2, 3]), ("-2:", [2, 3]), (":2", [0, 1]), ("1:3", [1, 2]),
    ("::2", [0, 2]), ("0,3", [0, 3]), ("-1", [3]), ("3, 1", [1, 3]),
])
def test_parse_layers(spec, expected):
    assert parse_layers(spec, [0, 1, 2, 3]) == expected


@pytest.mark.parametrize("spec", ["4", "-5", "a:b", "1:2:3:4", "5:", "x"])
def test_parse_layers_refuses_with_a_sentence(spec):
    with pytest.raises(UsageError, match="--layers"):
        parse_layers(spec, [0, 1, 2, 3])


def test_block_index():
    assert block_index("transformer.h.11.attn.c_attn") == 11
    assert block_index("bert.encoder.layer.3.output.dense") == 3
    assert block_index("lm_head") is None


# --- freezing, LoRA-FA, rsLoRA, LayerNorm tuning, counts --------------------------------------

def test_only_lora_trains_and_counts_are_exact(tiny_gpt2):
    total = sum(p.numel() for p in tiny_gpt2.parameters())
    add_lora(tiny_gpt2, LoraConfig(rank=4, targets=["attn", "mlp"], layers="-1:"))
    trainable = [n for n, p in tiny_gpt2.named_parameters() if p.requires_grad]
    assert trainable == [f"transformer.h.1.{s}.{m}" for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
                         for m in ("A", "B")]
    counts = count_parameters(tiny_gpt2)
    # n_embd 32, rank 4: c_attn 32->96, attn c_proj 32->32, c_fc 32->128, mlp c_proj 128->32
    per_module = {"transformer.h.1.attn.c_attn": 4 * 32 + 96 * 4, "transformer.h.1.attn.c_proj": 4 * 32 + 32 * 4,
                  "transformer.h.1.mlp.c_fc": 4 * 32 + 128 * 4, "transformer.h.1.mlp.c_proj": 4 * 128 + 32 * 4}
    assert counts["per_module"] == per_module
    assert counts["lora"] == counts["trainable"] == counts["lora_trainable"] == sum(per_module.values()) == 2048
    assert counts["total"] == total + 2048  # the tied lm_head/wte counted once
    assert counts["other_trainable"] == 0
    assert counts["trainable_bytes"] == 2048 * 4
    assert len(lora_parameters(tiny_gpt2)) == 8


def test_lora_fa_freezes_a(tiny_llama):
    add_lora(tiny_llama, LoraConfig(rank=4, freeze_a=True))
    tiny_llama.train()
    tiny_llama(_ids(), labels=_ids()).loss.backward()
    for layer in lora_layers(tiny_llama).values():
        assert not layer.A.requires_grad and layer.A.grad is None
        assert layer.B.requires_grad and layer.B.grad is not None
    counts = count_parameters(tiny_llama)
    assert counts["lora_trainable"] == sum(l.B.numel() for l in lora_layers(tiny_llama).values())


@pytest.mark.parametrize("rslora, expected", [(False, 16 / 4), (True, 16 / math.sqrt(4))])
def test_scaling(tiny_gpt2, rslora, expected):
    layers = add_lora(tiny_gpt2, LoraConfig(rank=4, alpha=16, rslora=rslora))
    assert all(layer.scaling == pytest.approx(expected) for layer in layers.values())
    layer = next(iter(layers.values()))
    _nonzero(layer)
    x = torch.randn(3, layer.in_features)
    torch.testing.assert_close(layer(x) - layer.base(x), expected * (x @ layer.A.T @ layer.B.T).detach(),
                               atol=1e-5, rtol=1e-5)


def test_layernorm_tuning_selects_the_chosen_blocks_norms(tiny_gpt2, tiny_llama):
    add_lora(tiny_gpt2, LoraConfig(layers="-1:", train_layernorm=True))
    trainable = {n for n, p in tiny_gpt2.named_parameters() if p.requires_grad and not n.endswith((".A", ".B"))}
    assert trainable == {f"transformer.h.1.{ln}.{p}" for ln in ("ln_1", "ln_2") for p in ("weight", "bias")}
    assert count_parameters(tiny_gpt2)["other_trainable"] == 4 * 32

    add_lora(tiny_llama, LoraConfig(layers="0", train_layernorm=True))
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad and not n.endswith((".A", ".B"))}
    assert trainable == {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"}
    assert set(norm_modules(tiny_llama)) == {f"model.layers.{i}.{n}" for i in (0, 1)
                                            for n in ("input_layernorm", "post_attention_layernorm")}


def test_layernorms_stay_frozen_by_default(tiny_gpt2):
    add_lora(tiny_gpt2, LoraConfig())
    assert count_parameters(tiny_gpt2)["other_trainable"] == 0


def test_lora_layers_found_by_type_not_name(tiny_gpt2):
    add_lora(tiny_gpt2, LoraConfig(layers="0"))
    # a module whose name looks like LoRA is not one
    tiny_gpt2.lora_A = nn.Linear(2, 2)
    assert list(lora_layers(tiny_gpt2)) == [
        "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]


@pytest.mark.parametrize("init", ["kaiming_uniform", "svd"])
def test_merge_folds_the_update_in(tiny_gpt2, init):
    add_lora(tiny_gpt2, LoraConfig(rank=4, init=init))
    for layer in lora_layers(tiny_gpt2).values():
        _nonzero(layer, 0.1)
    ids = _ids()
    with torch.no_grad():
        before = tiny_gpt2(ids).logits
    merge_lora(tiny_gpt2)
    assert not lora_layers(tiny_gpt2)
    assert isinstance(tiny_gpt2.transformer.h[0].attn.c_attn, Conv1D)
    with torch.no_grad():
        torch.testing.assert_close(tiny_gpt2(ids).logits, before, atol=1e-4, rtol=1e-4)
