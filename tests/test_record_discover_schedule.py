"""LoRA pairs found by type (lorascope's and PEFT's layers, through wrappers) and the snapshot
schedules."""
from __future__ import annotations

import pytest
import torch

from lorascope.config import RecordConfig
from lorascope.errors import UsageError
from lorascope.lora.pairs import find_lora_pairs, select_pairs
from lorascope.record.schedule import build_schedule
from tests.record_helpers import tiny_lora_gpt2


def test_lorascope_pairs_and_wrappers():
    model = tiny_lora_gpt2()
    pairs = find_lora_pairs(model)
    assert len(pairs) == 8
    pair = pairs["transformer.h.1.attn.c_proj"]
    assert pair.A.shape == (4, 32) and pair.B.shape == (32, 4)
    assert pair.layer_index == 1 and pair.kind == "lorascope.LoRALinear"
    assert pair.init == "gaussian" and pair.scaling == pytest.approx(2.0)
    compiled = torch.compile(model)  # wrapping only: nothing is compiled until it is called
    assert list(find_lora_pairs(compiled)) == list(pairs)
    assert list(find_lora_pairs(torch.nn.DataParallel(model))) == list(pairs)
    assert find_lora_pairs(compiled)["transformer.h.1.attn.c_proj"].A is pair.A


def test_peft_pairs_match_peft_delta_weight(tiny_gpt2):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_gpt2, peft.LoraConfig(
        r=4, lora_alpha=12, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False))
    pairs = find_lora_pairs(model)
    assert list(pairs) == [f"base_model.model.transformer.h.{i}.attn.c_attn" for i in range(2)]
    pair = pairs["base_model.model.transformer.h.0.attn.c_attn"]
    layer = model.get_submodule(pair.name)
    assert pair.kind == "peft.Linear" and pair.rank == 4 and pair.scaling == pytest.approx(3.0)
    assert (pair.in_features, pair.out_features) == (32, 96)
    delta = pair.scaling * pair.B.detach() @ pair.A.detach()  # (out, in)
    # PEFT's own delta for a Conv1D is (in, out): the pair hides the orientation
    torch.testing.assert_close(delta, layer.get_delta_weight("default").T)
    assert pair.base_weight().shape == (96, 32)
    torch.testing.assert_close(pair.base_weight(), layer.get_base_layer().weight.T)


def test_no_lora_is_a_usage_error_saying_how_to_add_it(tiny_gpt2):
    with pytest.raises(UsageError, match="add_lora"):
        find_lora_pairs(tiny_gpt2)


def test_selector_globs():
    pairs = find_lora_pairs(tiny_lora_gpt2())
    assert list(select_pairs(pairs, "*.h.1.mlp.*")) == ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
    assert len(select_pairs(pairs, "*.c_fc, *.c_attn")) == 4
    with pytest.raises(UsageError, match="transformer.h.0.attn.c_attn"):
        select_pairs(pairs, "*.q_proj")


def test_every_n_and_dense_first():
    assert build_schedule(RecordConfig(every=1)).steps(4) == [0, 1, 2, 3, 4]
    assert build_schedule(RecordConfig(every=4)).steps(10) == [0, 4, 8]
    assert build_schedule(RecordConfig(every=5, dense_first=3)).steps(12) == [0, 1, 2, 3, 5, 10]


def test_log_spaced_needs_the_total_and_includes_both_ends():
    schedule = build_schedule(RecordConfig(log_spaced=5), total_steps=10_000)
    assert schedule.steps(10_000) == [0, 1, 10, 100, 1000, 10_000]
    assert 100 in schedule and 101 not in schedule
    with pytest.raises(UsageError, match="planned number"):
        build_schedule(RecordConfig(log_spaced=5))
    with pytest.raises(UsageError):
        build_schedule(RecordConfig(every=0))
