"""Training with LoRA (torch): the loop (``loop``), optimizers and their parameter groups
(``optim``), learning-rate schedules (``schedules``), mixed precision (``amp``), data parallelism
(``distributed``), evaluation and the model report. It never imports the Recorder: the loop
calls whatever implements ``loop.StepHooks``.

The optimizers' and schedules' names are declared here, where importing costs nothing, so the
CLI's help lists them without torch; ``optim.py`` and ``schedules.py`` implement them."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lorascope.registry import Registry

if TYPE_CHECKING:
    from lorascope.train.optim import OptimizerFactory
    from lorascope.train.schedules import ScheduleFactory

__all__ = ["OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", provider="lorascope.train.optim", declared={
    "adamw": "torch's AdamW (decoupled weight decay)",
    "came": "CAME (came-pytorch): confidence-guided, factored second moments",
    "adafactor": "transformers' Adafactor: factored second moments, a fixed lr or its own relative step",
    "sgd": "SGD with optim.momentum",
})

SCHEDULES: Registry[ScheduleFactory] = Registry("schedule", provider="lorascope.train.schedules", declared={
    "warmup_cosine": "linear warmup, then half a cosine down to optim.min_lr",
    "linear": "linear warmup, then a straight line down to optim.min_lr",
    "constant": "the peak lr throughout",
    "exponential": "lr * gamma^step from the first step: no warmup, no floor",
    "cosine": "half a cosine from the peak lr down to optim.min_lr, no warmup",
    "adafactor": "the lr that relative-step Adafactor computes itself (optim.adafactor_relative_step)",
})
