"""Optimizers by name (the implementations of ``lorascope.train.OPTIMIZERS``), and the parameter
groups they train.

A model with LoRA layers is trained in up to three groups, each carrying a ``"name"`` so that the
recorder can log a learning rate per group: ``"A"``, ``"B"`` (LoRA+ gives it ``ratio * lr``) and
``"other"`` (LayerNorms, a classifier head: anything else that requires grad, at the base lr).
LoRA matrices are the pairs ``lorascope.lora.pairs.lora_pairs`` finds (by type), never found
by parameter names; DoRA's magnitude vectors train in "other", at the base lr as PEFT trains them.

The learning-rate schedules live in ``lorascope.train.schedules`` and are re-exported here.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import nn

from lorascope.config import OptimConfig
from lorascope.errors import UsageError
from lorascope.lora.pairs import lora_pairs
from lorascope.train import OPTIMIZERS
from lorascope.train.schedules import (
    SCHEDULES,
    WARMUP_SCHEDULES,
    build_schedule,
    current_lrs,
    linear_factor,
    warmup_cosine_factor,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "CAME_BETAS",
    "CAME_EPS",
    "lora_param_groups",
    "build_optimizer",
    "validate_optim",
    "build_schedule",
    "current_lrs",
    "warmup_cosine_factor",
    "linear_factor",
]

ParamGroups = list[dict[str, Any]]
OptimizerFactory = Callable[[ParamGroups, OptimConfig], torch.optim.Optimizer]

# came_pytorch's own defaults; OptimConfig.betas holds AdamW's two betas unless a user gives three.
CAME_BETAS = (0.9, 0.999, 0.9999)
# CAME's eps is two constants (squared-gradient and instability regularisers), not AdamW's one.
CAME_EPS = (1e-30, 1e-16)


def lora_param_groups(model: nn.Module, lr: float, lora_plus_ratio: float = 1.0) -> ParamGroups:
    """Named groups "A", "B" (lr * lora_plus_ratio) and "other"; empty groups are left out, so a
    LoRA-FA model (A frozen) has no "A" group and a head-only model has only "other"."""
    a_params: list[nn.Parameter] = []
    b_params: list[nn.Parameter] = []
    lora_ids: set[int] = set()
    for pair in lora_pairs(model).values():
        A, B = pair.A, pair.B
        for param, bucket in ((A, a_params), (B, b_params)):
            # Frozen A (LoRA-FA) still counts as LoRA, so it never lands in "other".
            if id(param) not in lora_ids:
                lora_ids.add(id(param))
                if param.requires_grad:
                    bucket.append(param)
    if lora_plus_ratio != 1.0 and not b_params:
        raise UsageError(
            "LoRA+ (optim.lora_plus_ratio) scales the learning rate of LoRA's B matrices, but the "
            "model has no trainable LoRA layers; set optim.lora_plus_ratio = 1"
        )
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in lora_ids]
    groups = [
        {"name": "A", "params": a_params, "lr": lr},
        {"name": "B", "params": b_params, "lr": lr * lora_plus_ratio},
        {"name": "other", "params": other, "lr": lr},
    ]
    return [g for g in groups if g["params"]]


# --- checking a configuration before anything is built ---------------------------------------

def validate_optim(cfg: OptimConfig) -> None:
    """Raises UsageError for names that are not registered and for combinations that cannot
    work. Cheap (no model needed), so a CLI can call it before loading anything."""
    OPTIMIZERS.get(cfg.optimizer)
    SCHEDULES.get(cfg.schedule)
    relative = cfg.adafactor_relative_step
    if relative and cfg.optimizer != "adafactor":
        raise UsageError(
            f"optim.adafactor_relative_step only applies to the adafactor optimizer, not "
            f"{cfg.optimizer!r}; turn it off or use --optimizer adafactor"
        )
    if relative and cfg.schedule != "adafactor":
        raise UsageError(
            "Adafactor with relative_step computes its own learning rate, so it needs the "
            f"'adafactor' schedule (got {cfg.schedule!r}); use --schedule adafactor, or turn "
            "off optim.adafactor_relative_step to use a fixed lr with any schedule"
        )
    if cfg.schedule == "adafactor" and not relative:
        raise UsageError(
            "the 'adafactor' schedule only reports the learning rate that Adafactor computes in "
            "relative_step mode; set optim.optimizer = 'adafactor' and "
            "optim.adafactor_relative_step = true, or choose another schedule"
        )
    if not cfg.lora_plus_ratio > 0:
        raise UsageError(
            f"optim.lora_plus_ratio must be greater than 0 (got {cfg.lora_plus_ratio}); "
            "1 turns LoRA+ off, LoRA+ suggests 16"
        )
    if relative and cfg.lora_plus_ratio != 1.0:
        raise UsageError(
            "LoRA+ needs a fixed learning rate to scale, but relative_step Adafactor computes "
            "its own; set optim.lora_plus_ratio = 1 or turn off optim.adafactor_relative_step"
        )
    if cfg.optimizer == "adamw" and len(cfg.betas) != 2:
        raise UsageError(f"AdamW takes two betas (got {cfg.betas}); three are for CAME")
    if not all(0 <= beta < 1 for beta in cfg.betas):
        raise UsageError(f"optim.betas must each be in [0, 1) (got {cfg.betas})")
    if cfg.schedule in WARMUP_SCHEDULES and cfg.warmup_steps >= cfg.steps:
        raise UsageError(
            f"optim.warmup ({cfg.warmup:g} = {cfg.warmup_steps} steps) must be shorter than "
            f"optim.steps ({cfg.steps}) for the {cfg.schedule!r} schedule, or the peak lr is never "
            "reached; give a fraction such as --set optim.warmup=0.1"
        )
    if not 0 <= cfg.momentum < 1:
        raise UsageError(f"optim.momentum must be in [0, 1) (got {cfg.momentum}); try 0.9")
    if not cfg.gamma > 0:
        raise UsageError(f"optim.gamma must be greater than 0 (got {cfg.gamma}); try 0.95")


# --- building ---------------------------------------------------------------------------------

def build_optimizer(
    params_or_model: nn.Module | Iterable[nn.Parameter], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` over a model's named groups (see module docstring), or
    over a plain iterable of parameters as one group named "all"."""
    validate_optim(cfg)
    if isinstance(params_or_model, nn.Module):
        groups = lora_param_groups(params_or_model, cfg.lr, cfg.lora_plus_ratio)
    else:
        if cfg.lora_plus_ratio != 1.0:
            raise UsageError(
                "LoRA+ needs the model to tell A from B; pass the model to build_optimizer, "
                "not a list of parameters"
            )
        params = [p for p in params_or_model if p.requires_grad]
        groups = [{"name": "all", "params": params, "lr": cfg.lr}] if params else []
    if not groups:
        raise UsageError(
            "nothing to train: no parameter requires grad; add LoRA layers or unfreeze some"
        )
    return OPTIMIZERS.get(cfg.optimizer)(groups, cfg)


@OPTIMIZERS.register("adamw")
def _adamw(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    beta1, beta2 = cfg.betas
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(beta1, beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


@OPTIMIZERS.register("came")
def _came(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    from came_pytorch import CAME

    betas = tuple(cfg.betas) if len(cfg.betas) == 3 else CAME_BETAS
    return CAME(groups, lr=cfg.lr, betas=betas, eps=CAME_EPS, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adafactor")
def _adafactor(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor

    if cfg.adafactor_relative_step:
        # Adafactor's own defaults otherwise (scale_parameter=True, warmup_init=False): the step
        # is min(1e-2, 1/sqrt(t)) times the parameter's RMS, floored at 1e-3. A zero-initialised
        # B therefore starts with lr 1e-5, one reason 000_*.txt saw Adafactor barely move.
        return Adafactor(
            [{k: v for k, v in g.items() if k != "lr"} for g in groups],
            lr=None, relative_step=True, weight_decay=cfg.weight_decay,
        )
    # The fixed-lr mode transformers documents for fine-tuning: the lr is what the schedule says.
    return Adafactor(
        groups, lr=cfg.lr, relative_step=False, scale_parameter=False, warmup_init=False,
        weight_decay=cfg.weight_decay,
    )


@OPTIMIZERS.register("sgd")
def _sgd(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
