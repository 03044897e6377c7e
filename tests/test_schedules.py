from __future__ import annotations

import math

import pytest
import torch
from tiny_lora_models import TinyNet, mse, quadratic_problem

from lorascope.config import OptimConfig
from lorascope.errors import UsageError
from lorascope.train.optim import build_optimizer
from lorascope.train.schedules import (
    SCHEDULES,
    build_schedule,
    current_lrs,
    linear_factor,
    warmup_cosine_factor,
)

PEAK, MIN = 1e-3, 1e-4
WARMUP, TOTAL = 4, 24  # decay spans steps 4..24, midpoint 14


@pytest.mark.parametrize("factor", [warmup_cosine_factor, linear_factor])
def test_warmup_factors_at_known_steps(factor):
    ratio = MIN / PEAK
    assert factor(0, WARMUP, TOTAL, ratio) == pytest.approx(1 / 5)  # (0 + 1) / (4 + 1)
    assert factor(3, WARMUP, TOTAL, ratio) == pytest.approx(4 / 5)
    assert factor(WARMUP, WARMUP, TOTAL, ratio) == pytest.approx(1.0)  # warmup end = peak
    assert factor(14, WARMUP, TOTAL, ratio) == pytest.approx((1 + ratio) / 2)  # midpoint
    assert factor(TOTAL, WARMUP, TOTAL, ratio) == pytest.approx(ratio)  # end = min_lr
    assert factor(TOTAL + 50, WARMUP, TOTAL, ratio) == pytest.approx(ratio)  # stays at the floor


def test_cosine_and_linear_differ_between_the_known_points():
    # A quarter of the way down: cosine is at (1 + cos(pi/4)) / 2, the line at 3/4.
    assert warmup_cosine_factor(9, WARMUP, TOTAL, 0.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert linear_factor(9, WARMUP, TOTAL, 0.0) == pytest.approx(0.75)


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine_factor(0, 0, 10, 0.0) == pytest.approx(1.0)
    assert linear_factor(5, 0, 10, 0.0) == pytest.approx(0.5)


def _run(schedule: str, steps: int = TOTAL, **extra) -> tuple[list[dict[str, float]], list[list[float]]]:
    """current_lrs and get_last_lr before each of ``steps`` updates (and after the last one)."""
    cfg = OptimConfig(
        optimizer="sgd", lr=PEAK, min_lr=MIN, warmup=WARMUP, steps=steps,
        schedule=schedule, **extra,
    )
    net, x, y = quadratic_problem()
    optimizer = build_optimizer(net, cfg)
    scheduler = build_schedule(optimizer, cfg)
    seen, last = [current_lrs(optimizer)], [scheduler.get_last_lr()]
    for _ in range(steps):
        optimizer.zero_grad()
        mse(net, x, y).backward()
        optimizer.step()
        scheduler.step()
        seen.append(current_lrs(optimizer))
        last.append(scheduler.get_last_lr())
    return seen, last


@pytest.mark.parametrize("schedule,factor", [("warmup_cosine", warmup_cosine_factor), ("linear", linear_factor)])
def test_lambda_schedules_follow_their_factor_for_every_group(schedule, factor):
    seen, _ = _run(schedule, lora_plus_ratio=4.0)
    for step, lrs in enumerate(seen):
        expected = PEAK * factor(step, WARMUP, TOTAL, MIN / PEAK)
        assert lrs["A"] == pytest.approx(expected)
        assert lrs["other"] == pytest.approx(expected)
        assert lrs["B"] == pytest.approx(4.0 * expected)  # LoRA+ keeps its ratio to the end
    assert seen[WARMUP]["A"] == pytest.approx(PEAK)
    assert seen[-1]["A"] == pytest.approx(MIN)


def test_exponential_is_gamma_to_the_t():
    seen, _ = _run("exponential", gamma=0.9)
    for step, lrs in enumerate(seen):
        assert lrs["A"] == pytest.approx(PEAK * 0.9**step)


def test_cosine_annealing_reaches_min_lr_at_total_steps():
    seen, _ = _run("cosine")
    assert seen[0]["A"] == pytest.approx(PEAK)
    assert seen[TOTAL // 2]["A"] == pytest.approx((PEAK + MIN) / 2)
    assert seen[TOTAL]["A"] == pytest.approx(MIN)


def test_constant_is_constant():
    seen, _ = _run("constant")
    assert {lrs["B"] for lrs in seen} == {PEAK}


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES.names() if s != "adafactor"])
def test_current_lrs_matches_get_last_lr(schedule):
    seen, last = _run(schedule)
    for lrs, torch_lrs in zip(seen, last):
        # Groups in order A, B, other.
        assert list(lrs.values()) == pytest.approx(torch_lrs)


def _relative_adafactor(net: torch.nn.Module) -> tuple[torch.optim.Optimizer, object]:
    cfg = OptimConfig(optimizer="adafactor", adafactor_relative_step=True, schedule="adafactor")
    optimizer = build_optimizer(net, cfg)
    return optimizer, build_schedule(optimizer, cfg)


def test_adafactor_lr_before_the_first_step_is_known():
    net = TinyNet()
    with torch.no_grad():
        net.lora.A.fill_(0.5)  # RMS 0.5
        net.lora.B.zero_()  # RMS 0: Adafactor floors the scale at eps[1] = 1e-3
    optimizer, _ = _relative_adafactor(net)
    lrs = current_lrs(optimizer)
    # Step 1: relative step min(1e-2, 1/sqrt(1)) = 1e-2, times max(1e-3, RMS).
    assert lrs["A"] == pytest.approx(0.5 * 1e-2)
    assert lrs["B"] == pytest.approx(1e-3 * 1e-2)


def test_adafactor_current_lrs_predicts_the_lr_it_applies():
    net, x, y = quadratic_problem()
    optimizer, scheduler = _relative_adafactor(net)
    for _ in range(5):
        predicted = current_lrs(optimizer)
        optimizer.zero_grad()
        mse(net, x, y).backward()
        optimizer.step()
        applied = {
            g["name"]: optimizer._get_lr(g, optimizer.state[g["params"][0]])
            for g in optimizer.param_groups
        }
        assert predicted == pytest.approx(applied)
        scheduler.step()
        assert scheduler.get_last_lr() == pytest.approx(list(current_lrs(optimizer).values()))
        # transformers' own get_lr would drop every group here (grads zeroed); ours does not.
        optimizer.zero_grad(set_to_none=True)
        assert len(current_lrs(optimizer)) == 3


def test_adafactor_schedule_built_after_a_backward_pass():
    net, x, y = quadratic_problem()
    cfg = OptimConfig(optimizer="adafactor", adafactor_relative_step=True, schedule="adafactor")
    optimizer = build_optimizer(net, cfg)
    mse(net, x, y).backward()  # grads but no optimizer state: upstream get_lr raised KeyError
    scheduler = build_schedule(optimizer, cfg)
    assert len(scheduler.get_last_lr()) == 3


def test_adafactor_schedule_refuses_other_optimizers():
    net = TinyNet()
    adamw = torch.optim.AdamW(net.parameters())
    with pytest.raises(UsageError, match="relative_step mode"):
        build_schedule(adamw, OptimConfig(schedule="adafactor"))


def test_relative_step_adafactor_refuses_other_schedules():
    net = TinyNet()
    cfg = OptimConfig(optimizer="adafactor", adafactor_relative_step=True, schedule="adafactor")
    optimizer = build_optimizer(net, cfg)
    with pytest.raises(UsageError, match="needs the 'adafactor' schedule"):
        build_schedule(optimizer, OptimConfig(schedule="cosine"))


def test_zero_total_steps_is_a_usage_error():
    optimizer = torch.optim.SGD(TinyNet().parameters(), lr=0.1)
    with pytest.raises(UsageError, match="at least one step"):
        build_schedule(optimizer, OptimConfig(schedule="constant"), total_steps=0)
