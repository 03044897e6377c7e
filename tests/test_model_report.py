from __future__ import annotations

import pytest
import torch
from tiny_lora_models import TinyNet, mse, quadratic_problem
from torch import nn

from lorascope.config import OptimConfig
from lorascope.train.model_report import (
    estimate_optimizer_state_bytes,
    model_report,
    optimizer_state_bytes,
)
from lorascope.train.optim import build_optimizer


def test_counts_on_a_model_with_known_parameters():
    report = model_report(TinyNet(), model_name="tiny")
    # See TinyNet's docstring: 66 total, 38 trainable (A 12 + B 8 + norm 8 + head 10), LoRA 20.
    assert (report.total_params, report.trainable_params, report.lora_params) == (66, 38, 20)
    (module,) = report.lora_modules
    assert (module.name, module.rank, module.in_features, module.out_features) == ("lora", 2, 6, 4)
    assert module.params == module.trainable == 20
    assert report.weights_bytes == 66 * 4
    assert (report.grads_bytes, report.grads_source) == (38 * 4, "estimated")
    assert report.optimizer_state_source == "none"
    # what trains outside the LoRA pair, by module (the head hides in a module named lora_B)
    assert report.other_trainable == {"norm": 8, "lora_B": 10}
    assert "\tOther trainable parameters: 18 (norm 8, lora_B 10)" in report.format().splitlines()


def test_tied_weights_of_gpt2_count_once(tiny_gpt2):
    # wte 128*32 + wpe 64*32 + 2 blocks * (ln 64 + c_attn 32*96+96 + c_proj 32*32+32 + ln 64
    # + c_fc 32*128+128 + mlp c_proj 128*32+32) + ln_f 64; lm_head shares wte.
    expected = 4096 + 2048 + 2 * (64 + 3168 + 1056 + 64 + 4224 + 4128) + 64
    report = model_report(tiny_gpt2)
    assert report.total_params == report.trainable_params == expected == 31616
    assert report.lora_params == 0


def test_lora_fa_reports_frozen_a():
    net = TinyNet()
    net.lora.A.requires_grad_(False)
    report = model_report(net)
    assert report.trainable_params == 38 - 12
    assert (report.lora_modules[0].params, report.lora_modules[0].trainable) == (20, 8)
    assert "(8 trainable)" in report.format()


def test_grads_are_measured_after_backward():
    net, x, y = quadratic_problem()
    mse(net, x, y).backward()
    report = model_report(net)
    assert (report.grads_bytes, report.grads_source) == (38 * 4, "measured")


OPTIMIZER_CASES = [
    ("adamw", {}),
    ("came", {}),
    ("adafactor", {}),
    ("adafactor", {"adafactor_relative_step": True, "schedule": "adafactor"}),
    ("sgd", {}),
    ("sgd", {"momentum": 0.0}),
]


@pytest.mark.parametrize("name,extra", OPTIMIZER_CASES)
def test_state_estimate_equals_what_a_step_allocates(name, extra):
    net, x, y = quadratic_problem()
    optimizer = build_optimizer(net, OptimConfig(optimizer=name, **extra))
    before = model_report(net, optimizer)
    assert before.optimizer_state_source == "estimated"
    mse(net, x, y).backward()
    optimizer.step()
    assert before.optimizer_state_bytes == optimizer_state_bytes(optimizer)
    after = model_report(net, optimizer)
    if extra.get("momentum") == 0.0:  # plain SGD keeps no state at all
        assert before.optimizer_state_bytes == 0
    else:
        assert after.optimizer_state_source == "measured"
        assert after.optimizer_state_bytes == before.optimizer_state_bytes > 0


def test_adamw_state_is_two_moments_and_a_step_counter():
    optimizer = build_optimizer(TinyNet(), OptimConfig(optimizer="adamw"))
    # 38 trainable fp32 values * 2 moments, plus a 0-d fp32 "step" for each of the 6 tensors.
    assert estimate_optimizer_state_bytes(optimizer) == 38 * 2 * 4 + 6 * 4


@pytest.mark.parametrize("name", ["adafactor", "came"])
def test_factored_state_for_bf16_parameters_is_fp32(name):
    torch.manual_seed(0)
    layer = nn.Linear(8, 5).to(torch.bfloat16)
    optimizer = build_optimizer(layer, OptimConfig(optimizer=name))
    estimate = estimate_optimizer_state_bytes(optimizer)
    layer(torch.randn(3, 8, dtype=torch.bfloat16)).float().pow(2).mean().backward()
    optimizer.step()
    assert estimate == optimizer_state_bytes(optimizer)


def test_unknown_optimizer_state_is_reported_as_unknown():
    net = TinyNet()
    optimizer = torch.optim.Adagrad(net.parameters())  # Adagrad allocates its state up front
    optimizer.state.clear()
    report = model_report(net, optimizer)
    assert (report.optimizer_state_bytes, report.optimizer_state_source) == (None, "unknown")
    assert "unknown for Adagrad" in report.format()


def test_format_prints_the_table():
    net, x, y = quadratic_problem()
    optimizer = build_optimizer(net, OptimConfig(optimizer="adamw"))
    text = model_report(net, optimizer, model_name="tiny").format()
    assert text.splitlines()[0] == "Model: tiny"
    assert "Total parameters: 66" in text
    assert "Trainable parameters: 38 (57.58%)" in text
    assert "LoRA parameters: 20 in 1 modules" in text
    assert "estimated for AdamW before its first step" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("lora "))
    assert row.split() == ["lora", "2", "6", "4", "20"]


def test_format_groups_thousands(tiny_gpt2):
    assert "Total parameters: 31,616" in model_report(tiny_gpt2).format()
