from __future__ import annotations

import pytest
import torch
from tiny_lora_models import TinyNet, mse, quadratic_problem
from torch import nn

from lorascope.config import OptimConfig
from lorascope.errors import UsageError
from lorascope.train.optim import (
    CAME_BETAS,
    CAME_EPS,
    OPTIMIZERS,
    build_optimizer,
    build_schedule,
    lora_param_groups,
    validate_optim,
)

# (optimizer, extra config) for every registry entry, Adafactor in both of its modes.
OPTIMIZER_CASES = [
    ("adamw", {"lr": 1e-2}),
    ("came", {"lr": 1e-2}),
    ("adafactor", {"lr": 1e-2}),
    ("adafactor", {"adafactor_relative_step": True, "schedule": "adafactor"}),
    ("sgd", {"lr": 5e-2}),
]


def _cfg(optimizer: str, **extra) -> OptimConfig:
    extra.setdefault("schedule", "constant")
    return OptimConfig(optimizer=optimizer, **extra)


def test_every_registered_optimizer_has_a_case():
    assert {name for name, _ in OPTIMIZER_CASES} == set(OPTIMIZERS.names())


@pytest.mark.parametrize("name,extra", OPTIMIZER_CASES)
def test_every_optimizer_reduces_a_quadratic_loss(name, extra):
    net, x, y = quadratic_problem()
    cfg = _cfg(name, **extra)
    optimizer = build_optimizer(net, cfg)
    schedule = build_schedule(optimizer, cfg, total_steps=40)
    start = mse(net, x, y).item()
    for _ in range(40):
        optimizer.zero_grad()
        mse(net, x, y).backward()
        optimizer.step()
        schedule.step()
    end = mse(net, x, y).item()
    assert end < 0.5 * start, f"{name} {extra}: loss {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize("name,extra", OPTIMIZER_CASES)
def test_every_optimizer_steps_a_tiny_gpt2(tiny_gpt2, name, extra):
    cfg = _cfg(name, **{**extra, "lr": 1e-3} if "lr" in extra else extra)
    tiny_gpt2.train()
    optimizer = build_optimizer(tiny_gpt2, cfg)
    batch = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = tiny_gpt2(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_groups_are_found_by_type_not_by_name():
    net = TinyNet()
    groups = {g["name"]: g for g in lora_param_groups(net, lr=1e-3)}
    assert [p is net.lora.A for p in groups["A"]["params"]] == [True]
    assert [p is net.lora.B for p in groups["B"]["params"]] == [True]
    # The head lives in a module named "lora_B" and LayerNorm is trainable: both are "other".
    other = groups["other"]["params"]
    assert {id(p) for p in other} == {id(p) for p in [*net.norm.parameters(), *net.lora_B.parameters()]}
    # The frozen base is in no group.
    assert all(p is not net.lora.base.weight for g in groups.values() for p in g["params"])


def test_lora_plus_gives_b_ratio_times_the_lr_and_sgd_applies_it():
    net, x, y = quadratic_problem()
    cfg = _cfg("sgd", lr=0.1, momentum=0.0, lora_plus_ratio=16.0)
    optimizer = build_optimizer(net, cfg)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"A": pytest.approx(0.1), "B": pytest.approx(1.6), "other": pytest.approx(0.1)}

    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    mse(net, x, y).backward()
    grads = {k: v.grad.clone() for k, v in net.named_parameters() if v.grad is not None}
    optimizer.step()
    after = dict(net.named_parameters())
    torch.testing.assert_close(after["lora.A"] - before["lora.A"], -0.1 * grads["lora.A"])
    torch.testing.assert_close(after["lora.B"] - before["lora.B"], -1.6 * grads["lora.B"])
    torch.testing.assert_close(after["norm.weight"] - before["norm.weight"], -0.1 * grads["norm.weight"])


def test_lora_fa_frozen_a_is_in_no_group():
    net = TinyNet()
    net.lora.A.requires_grad_(False)
    groups = lora_param_groups(net, lr=1e-3, lora_plus_ratio=4.0)
    assert [g["name"] for g in groups] == ["B", "other"]
    assert all(p is not net.lora.A for g in groups for p in g["params"])


def test_lora_plus_needs_lora_layers_and_the_model():
    plain = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(UsageError, match="no trainable LoRA layers"):
        build_optimizer(plain, _cfg("adamw", lora_plus_ratio=16.0))
    with pytest.raises(UsageError, match="pass the model"):
        build_optimizer(TinyNet().parameters(), _cfg("adamw", lora_plus_ratio=16.0))


def test_a_parameter_list_is_one_group_named_all():
    net = TinyNet()
    optimizer = build_optimizer(net.parameters(), _cfg("adamw"))
    (group,) = optimizer.param_groups
    assert group["name"] == "all"
    assert sum(p.numel() for p in group["params"]) == 38  # frozen base left out


def test_nothing_trainable_is_a_usage_error():
    frozen = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(UsageError, match="nothing to train"):
        build_optimizer(frozen, _cfg("adamw"))


def test_peft_lora_layers_are_found(tiny_gpt2):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    from lorascope.lora.pairs import lora_pairs

    pairs = lora_pairs(model)
    assert len(pairs) == 2  # one c_attn per block
    groups = {g["name"]: g["params"] for g in lora_param_groups(model, 1e-3, 2.0)}
    expected_a = [m.lora_A["default"].weight for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert [id(p) for p in groups["A"]] == [id(p) for p in expected_a]
    assert all(p.shape[1] == 4 for p in groups["B"])  # B is (out, rank)
    assert "other" not in groups  # PEFT froze everything else


def test_came_gets_three_betas_and_two_eps():
    net = TinyNet()
    default = build_optimizer(net, _cfg("came"))
    assert default.param_groups[0]["betas"] == CAME_BETAS
    assert default.param_groups[0]["eps"] == CAME_EPS
    given = build_optimizer(net, _cfg("came", betas=[0.8, 0.99, 0.999]))
    assert given.param_groups[0]["betas"] == (0.8, 0.99, 0.999)


def test_adamw_takes_config_values_and_refuses_three_betas():
    optimizer = build_optimizer(TinyNet(), _cfg("adamw", betas=[0.8, 0.95], eps=1e-6, weight_decay=0.1))
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.95), 1e-6, 0.1)
    with pytest.raises(UsageError, match="three are for CAME"):
        build_optimizer(TinyNet(), _cfg("adamw", betas=[0.9, 0.99, 0.999]))


def test_adafactor_modes():
    fixed = build_optimizer(TinyNet(), _cfg("adafactor", lr=1e-3))
    group = fixed.param_groups[0]
    assert (group["lr"], group["relative_step"], group["scale_parameter"]) == (1e-3, False, False)
    relative = build_optimizer(
        TinyNet(), _cfg("adafactor", adafactor_relative_step=True, schedule="adafactor")
    )
    group = relative.param_groups[0]
    assert (group["lr"], group["relative_step"]) == (None, True)


def test_sgd_uses_momentum():
    optimizer = build_optimizer(TinyNet(), _cfg("sgd", momentum=0.8))
    assert optimizer.param_groups[0]["momentum"] == 0.8


@pytest.mark.parametrize(
    "cfg,message",
    [
        (_cfg("lion"), "unknown optimizer 'lion'; choose one of: adamw, came, adafactor, sgd"),
        (_cfg("adamw", schedule="zigzag"), "unknown schedule 'zigzag'"),
        (_cfg("adamw", adafactor_relative_step=True), "only applies to the adafactor optimizer"),
        (_cfg("adafactor", adafactor_relative_step=True), "needs the\n?.*'adafactor' schedule"),
        (_cfg("adafactor", schedule="adafactor"), "relative_step mode"),
        (_cfg("adamw", schedule="adafactor"), "relative_step mode"),
        (
            _cfg("adafactor", adafactor_relative_step=True, schedule="adafactor", lora_plus_ratio=4.0),
            "LoRA\\+ needs a fixed learning rate",
        ),
        (_cfg("adamw", lora_plus_ratio=0.0), "lora_plus_ratio must be greater than 0"),
        (_cfg("adamw", betas=[0.9, 1.5]), "betas must each be in"),
        (_cfg("sgd", momentum=1.0), "momentum must be in"),
        (_cfg("adamw", schedule="warmup_cosine", warmup=40, steps=40), "warmup \\(40 = 40 steps\\)"),
        (_cfg("adamw", schedule="exponential", gamma=0.0), "gamma must be greater than 0"),
    ],
)
def test_bad_configurations_are_usage_errors(cfg, message):
    with pytest.raises(UsageError, match=message):
        validate_optim(cfg)


def test_warmup_may_exceed_steps_for_schedules_without_warmup():
    validate_optim(_cfg("adamw", schedule="cosine", warmup=50, steps=10))
