"""Learning-rate schedules by name (the implementations of ``lorascope.train.SCHEDULES``), and the
learning rate each parameter group will use next.

Every schedule is a torch ``LRScheduler`` built by ``build_schedule(optimizer, cfg, total_steps)``
and stepped once per optimizer step. The warmup schedules are pure factor functions of the step
(testable on their own) wrapped in ``LambdaLR``; their factor multiplies each group's own lr, so
LoRA+'s B group keeps its ratio all the way down (it ends at ratio * min_lr).
"""
from __future__ import annotations

import math
from functools import cache, partial
from typing import Callable

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LRScheduler,
)

from lorascope.config import OptimConfig
from lorascope.errors import UsageError
from lorascope.train import SCHEDULES

__all__ = [
    "SCHEDULES",
    "WARMUP_SCHEDULES",
    "build_schedule",
    "current_lrs",
    "warmup_cosine_factor",
    "linear_factor",
    "is_relative_step",
]

ScheduleFactory = Callable[[torch.optim.Optimizer, OptimConfig, int], LRScheduler]

# The schedules that use optim.warmup_steps (validation needs warmup_steps < steps for them).
WARMUP_SCHEDULES = ("linear", "warmup_cosine")


# --- the factors, as pure functions of the step ---------------------------------------------

def _warmup_factor(step: int, warmup_steps: int) -> float:
    # (step + 1) / (warmup + 1), as nanoGPT does: the first update already moves (a warmup from
    # exactly 0 wastes a step), and step == warmup_steps is the first at the peak.
    return (step + 1) / (warmup_steps + 1)


def _decay_progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """0 at the end of warmup, 1 at total_steps, clamped so a longer run stays at the floor."""
    span = max(1, total_steps - warmup_steps)
    return min(1.0, max(0.0, (step - warmup_steps) / span))


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """lr(step) / peak lr: linear warmup, then half a cosine from 1 down to min_ratio, reached
    at ``step == total_steps`` (the step after the last update, as CosineAnnealingLR's T_max)."""
    if step < warmup_steps:
        return _warmup_factor(step, warmup_steps)
    progress = _decay_progress(step, warmup_steps, total_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """lr(step) / peak lr: linear warmup, then a straight line from 1 down to min_ratio."""
    if step < warmup_steps:
        return _warmup_factor(step, warmup_steps)
    progress = _decay_progress(step, warmup_steps, total_steps)
    return 1.0 - (1.0 - min_ratio) * progress


def _constant_factor(step: int) -> float:
    return 1.0


# --- the registry -----------------------------------------------------------------------------

def _min_ratio(cfg: OptimConfig) -> float:
    return cfg.min_lr / cfg.lr


def _warmup_then(factor):
    """A LambdaLR over one of the warmup factor functions above, bound to the run's config."""
    def build(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
        return LambdaLR(optimizer, partial(factor, warmup_steps=cfg.warmup_steps,
                                           total_steps=total_steps, min_ratio=_min_ratio(cfg)))
    return build


SCHEDULES.register("warmup_cosine")(_warmup_then(warmup_cosine_factor))
SCHEDULES.register("linear")(_warmup_then(linear_factor))


@SCHEDULES.register("constant")
def _constant(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    return LambdaLR(optimizer, _constant_factor)


@SCHEDULES.register("exponential")
def _exponential(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    # No floor and no warmup on purpose: 000_*.txt saw every optimizer fail with ExponentialLR,
    # and the tool must let that happen where it can be seen rather than soften it.
    return ExponentialLR(optimizer, gamma=cfg.gamma)


@SCHEDULES.register("cosine")
def _cosine(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    # torch's eta_min is one absolute value for all groups (unlike warmup_cosine's ratio).
    return CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.min_lr)


@cache
def _adafactor_schedule_class() -> type[LRScheduler]:
    # Made on first use so that importing lorascope does not import transformers.
    from transformers.optimization import AdafactorSchedule

    class ReportingAdafactorSchedule(AdafactorSchedule):
        """transformers' AdafactorSchedule, reading the lr the way ``current_lrs`` does. Its own
        get_lr fails with KeyError when a parameter has a grad but no state yet (a schedule
        built after a backward pass), and drops groups whose grads are None, so the list no
        longer lines up with the groups after ``zero_grad()``."""

        def get_lr(self) -> list[float]:
            return [_adafactor_next_lr(self.optimizer, g) for g in self.optimizer.param_groups]

    return ReportingAdafactorSchedule


@SCHEDULES.register("adafactor")
def _adafactor(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    if not is_relative_step(optimizer):
        raise UsageError(
            "the 'adafactor' schedule only works with Adafactor in relative_step mode; set "
            "optim.optimizer = 'adafactor' and optim.adafactor_relative_step = true, or choose "
            "another schedule"
        )
    return _adafactor_schedule_class()(optimizer)


# --- building and reading ---------------------------------------------------------------------

def is_relative_step(optimizer: torch.optim.Optimizer) -> bool:
    """True for transformers' Adafactor with relative_step=True: it ignores the groups' lr."""
    return any(group.get("relative_step", False) for group in optimizer.param_groups)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int | None = None
) -> LRScheduler:
    """The schedule ``cfg.schedule`` over ``total_steps`` optimizer steps (default cfg.steps)."""
    factory = SCHEDULES.get(cfg.schedule)
    total = cfg.steps if total_steps is None else total_steps
    if total < 1:
        raise UsageError(f"a schedule needs at least one step (got total_steps={total})")
    if is_relative_step(optimizer) and cfg.schedule != "adafactor":
        raise UsageError(
            "Adafactor with relative_step computes its own learning rate, so it needs the "
            f"'adafactor' schedule (got {cfg.schedule!r}); use --schedule adafactor"
        )
    return factory(optimizer, cfg, total)


def current_lrs(
    optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None = None
) -> dict[str, float]:
    """The learning rate each group's next ``optimizer.step()`` will apply, by group name
    (``"name"`` key, else the group's index). Called before ``optimizer.step()`` it is the lr of
    that step; after ``scheduler.step()`` it is the next one, as ``get_last_lr()`` would say.
    ``scheduler`` is accepted so a loop can pass the pair it holds, but is not needed: every
    schedule writes its lr into the optimizer's groups, which is what is read here.

    Torch schedulers write the lr into the groups. Relative-step Adafactor ignores it and
    computes ``Adafactor._get_lr`` from the step count and the parameter's RMS; that depends on
    the parameter, so a group reports its first trainable parameter's, as transformers'
    AdafactorSchedule does (which, unlike this, goes blank once grads are zeroed)."""
    lrs: dict[str, float] = {}
    for index, group in enumerate(optimizer.param_groups):
        name = str(group.get("name", index))
        if group.get("relative_step", False):
            lrs[name] = _adafactor_next_lr(optimizer, group)
        else:
            lrs[name] = float(group["lr"])
    return lrs


def _adafactor_next_lr(optimizer: torch.optim.Optimizer, group: dict) -> float:
    param = next((p for p in group["params"] if p.requires_grad), group["params"][0])
    step = optimizer.state.get(param, {}).get("step", 0) + 1
    # Adafactor measures the RMS of the parameter as it is at the start of its step, i.e. now.
    rms = optimizer._rms(param.detach().float())
    return float(optimizer._get_lr(group, {"step": step, "RMS": rms}))
