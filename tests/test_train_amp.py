"""Mixed precision in the training loop: fp16 + GradScaler and bf16 through the same loop code on
CPU and CUDA (the CUDA cases are marked `gpu`). An injected overflow must make the scaler skip
exactly that step, halve its scale, and leave every weight as it was."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from lorascope.errors import UsageError
from lorascope.train.amp import PRECISIONS, resolve_precision
from lorascope.train.loop import train_loop
from tests.amp_helpers import DEVICES, OverflowAt, lm_batches, lora_model

CPU = torch.device("cpu")
INIT_SCALE = 2.0 ** 16  # GradScaler's default


class Hooks:
    """Records what the loop reports and a copy of the trainable weights after every step."""

    def __init__(self, model):
        self.model = model
        self.micro, self.steps, self.weights = [], [], {}

    def on_micro_step(self, micro_step, loss_scale=1.0):
        self.micro.append((micro_step, loss_scale))

    def on_optimizer_step(self, step, scalars, optimizer=None):
        self.steps.append(dict(scalars))
        self.weights[step] = [p.detach().clone() for p in self.model.parameters() if p.requires_grad]

    def log_eval(self, step, metrics):
        pass

    def column(self, name):
        return [s[name] for s in self.steps]


def train(device, mode, steps, *, overflow=(), factor=1e6, grad_accum=1, scheduler=None):
    device = torch.device(device)
    model = lora_model(device)
    hooks = Hooks(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    if scheduler is not None:
        scheduler = scheduler(optimizer)
    hooks.weights[0] = [p.detach().clone() for p in params]
    result = train_loop(model=OverflowAt(model, set(overflow), factor), optimizer=optimizer,
                        scheduler=scheduler, train_data=lm_batches(steps * grad_accum), device=device,
                        precision=resolve_precision(mode, device), total_steps=steps,
                        grad_accum=grad_accum, max_grad_norm=1.0, hooks=hooks)
    return hooks, result


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_precision_modes_on_cpu():
    fp16 = resolve_precision("fp16", CPU)
    assert fp16.dtype is torch.float16 and fp16.use_scaler
    scaler = fp16.scaler(CPU)
    assert scaler.is_enabled() and scaler.get_scale() == INIT_SCALE
    assert resolve_precision("bf16", CPU).dtype is torch.bfloat16 and not resolve_precision("bf16", CPU).use_scaler
    assert resolve_precision("auto", CPU) is PRECISIONS["off"]  # CPU autocast is slower than fp32 here
    assert not resolve_precision("off", CPU).scaler(CPU).is_enabled()
    with pytest.raises(UsageError, match="auto, off, bf16, fp16"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_trains_with_a_gradscaler(device):
    hooks, result = train(device, "fp16", 3, grad_accum=2)
    assert [scale for _, scale in hooks.micro] == [INIT_SCALE] * 6  # each backward was scaled
    assert hooks.column("skipped") == [0.0] * 3 and result.state.skipped_steps == 0
    assert hooks.column("loss_scale") == [INIT_SCALE] * 3
    assert all(math.isfinite(loss) for loss in hooks.column("loss"))
    assert not same(hooks.weights[0], hooks.weights[3])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("factor", [1e6, math.inf], ids=["gradient-overflow", "inf-loss"])
def test_an_overflow_skips_that_step_and_halves_the_scale(device, factor):
    hooks, result = train(device, "fp16", 4, overflow={3}, factor=factor)
    assert hooks.column("skipped") == [0.0, 0.0, 1.0, 0.0] and result.state.skipped_steps == 1
    # the scalars show the scale after each step: lowered at the skipped one, kept after it
    assert hooks.column("loss_scale") == [INIT_SCALE, INIT_SCALE, INIT_SCALE / 2, INIT_SCALE / 2]
    assert [scale for _, scale in hooks.micro] == [INIT_SCALE] * 3 + [INIT_SCALE / 2]
    assert not math.isfinite(hooks.steps[2]["grad_norm"])
    assert math.isfinite(hooks.steps[2]["loss"]) == math.isfinite(factor)  # 1e6: a finite loss overflowed
    assert same(hooks.weights[2], hooks.weights[3])  # bit-identical across the skipped step
    assert not same(hooks.weights[3], hooks.weights[4])  # and training went on
    assert all(torch.isfinite(w).all() for w in hooks.weights[4])


@pytest.mark.parametrize("device", DEVICES)
def test_an_overflow_in_one_micro_batch_skips_its_whole_step(device):
    hooks, _ = train(device, "fp16", 3, overflow={4}, grad_accum=2)  # micro 4 = step 2's second
    assert hooks.column("skipped") == [0.0, 1.0, 0.0]
    assert same(hooks.weights[1], hooks.weights[2])


def test_a_skipped_first_step_with_a_schedule_raises_no_order_warning():
    """torch takes a skipped first update for a scheduler called before the optimizer; under
    fp16 it is an expected overflow, and the schedule still advances one step per step."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hooks, _ = train("cpu", "fp16", 2, overflow={1},
                         scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step)))
    assert hooks.column("skipped") == [1.0, 0.0]
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_trains_without_a_scaler(device):
    hooks, _ = train(device, "bf16", 3)
    assert hooks.column("loss_scale") == [1.0] * 3 and [s for _, s in hooks.micro] == [1.0] * 3
    assert hooks.column("skipped") == [0.0] * 3
    assert all(math.isfinite(loss) for loss in hooks.column("loss"))
    assert not same(hooks.weights[0], hooks.weights[3])
