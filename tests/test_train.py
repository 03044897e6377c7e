"""The training loop on a tiny GPT-2, with plain torch optimizers (no adapters needed): what each
step does must be exactly what the loop's contract says."""
from __future__ import annotations

import copy
import functools
import math

import torch

from lorascope.train.amp import resolve_precision
from lorascope.train.loop import LoopState, StopOnSignal, train_loop
from tests.amp_helpers import lm_batches

CPU = torch.device("cpu")


batches = functools.partial(lm_batches, length=8)


class Hooks:
    def __init__(self):
        self.micro, self.steps = [], []

    def on_micro_step(self, micro_step, loss_scale=1.0):
        self.micro.append((micro_step, loss_scale))

    def on_optimizer_step(self, step, scalars, optimizer=None):
        self.steps.append((step, dict(scalars)))

    def log_eval(self, step, metrics):
        pass


def run(model, data, **kw):
    opt = kw.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=0.1)
    return train_loop(model=model, optimizer=opt, scheduler=None, train_data=data, device=CPU,
                      precision=kw.pop("precision", resolve_precision("off", CPU)), **kw)


def test_accumulation_equals_one_big_batch(tiny_gpt2):
    """Two micro-batches of 2 with accum=2 give the same update as one batch of 4 (equal lengths)."""
    big = batches(1, batch_size=4)
    small = [{k: v[:2] for k, v in big[0].items()}, {k: v[2:] for k, v in big[0].items()}]
    m1, m2 = copy.deepcopy(tiny_gpt2), copy.deepcopy(tiny_gpt2)
    m1.config.attn_pdrop = m1.config.resid_pdrop = m1.config.embd_pdrop = 0.0
    for m in (m1, m2):
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    run(m1, big, total_steps=1, grad_accum=1)
    run(m2, small, total_steps=1, grad_accum=2)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-5, rtol=1e-4)


def test_hooks_see_every_micro_and_optimizer_step(tiny_gpt2):
    hooks = Hooks()
    result = run(tiny_gpt2, batches(3), total_steps=4, grad_accum=3, hooks=hooks, lrs=lambda: {"A": 0.1, "B": 0.2})
    assert [m for m, _ in hooks.micro] == list(range(1, 13))
    assert [s for s, _ in hooks.steps] == [1, 2, 3, 4]
    scalars = hooks.steps[-1][1]
    assert scalars["lr"] == 0.1 and scalars["lr_B"] == 0.2 and scalars["skipped"] == 0.0
    assert scalars["tokens"] == 4 * 3 * 4 * 8 and result.state.micro_step == 12


def test_clipping_fires_and_is_reported(tiny_gpt2):
    hooks = Hooks()
    run(tiny_gpt2, batches(2), total_steps=2, max_grad_norm=1e-6, hooks=hooks)
    assert all(s["clipped"] == 1.0 and s["grad_norm"] > 1e-6 for _, s in hooks.steps)


class NaNAtStep(torch.nn.Module):
    """Wraps a model and returns a NaN loss on chosen calls: a simulated divergence on CPU."""

    def __init__(self, model, nan_calls):
        super().__init__()
        self.model, self.nan_calls, self.calls = model, set(nan_calls), 0

    def forward(self, **batch):
        out = self.model(**batch)
        self.calls += 1
        if self.calls in self.nan_calls:
            out.loss = out.loss * float("nan")
        return out


def test_nan_loss_skips_the_update_and_says_so(tiny_gpt2):
    model = NaNAtStep(tiny_gpt2, nan_calls={2})
    hooks = Hooks()
    before = {}

    class Snap(Hooks):
        def on_optimizer_step(self, step, scalars, optimizer=None):
            super().on_optimizer_step(step, scalars)
            before[step] = [p.detach().clone() for p in tiny_gpt2.parameters()]

    hooks = Snap()
    result = run(model, batches(3), total_steps=3, hooks=hooks)
    assert [s["skipped"] for _, s in hooks.steps] == [0.0, 1.0, 0.0]
    assert math.isnan(hooks.steps[1][1]["loss"]) and result.state.skipped_steps == 1
    for p1, p2 in zip(before[1], before[2]):
        assert torch.equal(p1, p2)  # the NaN step changed nothing
    assert all(torch.isfinite(p).all() for p in tiny_gpt2.parameters())


def test_stop_request_ends_at_a_step_boundary(tiny_gpt2):
    stop = StopOnSignal()

    def progress(state, loss):
        if state.step == 2:
            stop.requested = True

    result = run(tiny_gpt2, batches(2), total_steps=10, grad_accum=2, progress=progress, stop=stop)
    assert result.interrupted and result.state.step == 2 and result.state.micro_step == 4


def test_resume_replays_the_data_order(tiny_gpt2):
    """Stopping after 2 steps and resuming gives the weights of an uninterrupted run."""
    data = batches(5)
    full = copy.deepcopy(tiny_gpt2)
    torch.manual_seed(1)  # dropout draws from the global generator: same seed, same masks
    run(full, data, total_steps=4)
    part = copy.deepcopy(tiny_gpt2)
    opt = torch.optim.SGD(part.parameters(), lr=0.1)
    torch.manual_seed(1)
    r = run(part, data, total_steps=2, optimizer=opt)
    run(part, data, total_steps=4, optimizer=opt, state=LoopState(**r.state.__dict__))
    for p1, p2 in zip(full.parameters(), part.parameters()):
        torch.testing.assert_close(p1, p2)
