"""What a run trains, printed at its start as 002_*.txt did: total and trainable parameters, the
LoRA parameters of each adapted module, and the memory of weights, grads and optimizer state.

Grads and optimizer state are measured when they exist (after a backward pass / an optimizer
step) and estimated from the optimizer's known per-parameter state layout before that; the report
says which."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from lorascope.lora.pairs import LoraPair, lora_pairs
from lorascope.registry import Registry

__all__ = [
    "LoraModuleReport",
    "ModelReport",
    "model_report",
    "optimizer_state_bytes",
    "estimate_optimizer_state_bytes",
    "STATE_ESTIMATORS",
]

MIB = 2**20

# Bytes of state one parameter will hold, given the parameter and its group; keyed by the
# optimizer's class name (CAME and Adafactor are not imported just to be compared against).
StateEstimator = Callable[[nn.Parameter, dict], int]
STATE_ESTIMATORS: Registry[StateEstimator] = Registry("optimizer state estimate")


@dataclass
class LoraModuleReport:
    name: str
    rank: int
    in_features: int
    out_features: int
    params: int  # A and B together (and DoRA's magnitude)
    trainable: int  # fewer than params with LoRA-FA (A frozen)


@dataclass
class ModelReport:
    total_params: int
    trainable_params: int
    lora_params: int
    lora_modules: list[LoraModuleReport] = field(default_factory=list)
    # trainable parameters outside the LoRA pairs (a classification head, LayerNorms), by module
    other_trainable: dict[str, int] = field(default_factory=dict)
    weights_bytes: int = 0
    grads_bytes: int = 0
    grads_source: str = "estimated"  # "measured" | "estimated"
    optimizer: str = ""  # class name, "" when none was given
    optimizer_state_bytes: int | None = None  # None: no optimizer, or one we cannot estimate
    optimizer_state_source: str = "none"  # "measured" | "estimated" | "unknown" | "none"
    model_name: str = ""

    @property
    def weights_mib(self) -> float:
        return self.weights_bytes / MIB

    @property
    def grads_mib(self) -> float:
        return self.grads_bytes / MIB

    @property
    def optimizer_state_mib(self) -> float | None:
        if self.optimizer_state_bytes is None:
            return None
        return self.optimizer_state_bytes / MIB

    def format(self) -> str:
        share = 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0
        lines = [
            f"Model: {self.model_name or '(unnamed)'}",
            f"\tTotal parameters: {self.total_params:,}",
            f"\tTrainable parameters: {self.trainable_params:,} ({share:.2f}%)",
            f"\tLoRA parameters: {self.lora_params:,} in {len(self.lora_modules)} modules",
        ]
        if self.lora_modules:
            width = max(len("module"), *(len(m.name) for m in self.lora_modules))
            lines.append(f"\t  {'module':<{width}}  rank     in    out     params")
            for m in self.lora_modules:
                frozen = "" if m.trainable == m.params else f"  ({m.trainable:,} trainable)"
                lines.append(
                    f"\t  {m.name:<{width}}  {m.rank:>4} {m.in_features:>6} {m.out_features:>6}"
                    f" {m.params:>10,}{frozen}"
                )
        if self.other_trainable:
            listed = ", ".join(f"{name} {count:,}" for name, count in self.other_trainable.items())
            lines.append(f"\tOther trainable parameters: {sum(self.other_trainable.values()):,} ({listed})")
        lines.append(
            f"\tMemory (MiB): weights {self.weights_mib:.2f} | "
            f"grads {self.grads_mib:.2f} ({self.grads_source}) | {self._state_text()}"
        )
        return "\n".join(lines)

    def _state_text(self) -> str:
        if self.optimizer_state_source == "none":
            return "optimizer state: no optimizer given"
        if self.optimizer_state_mib is None:
            return f"optimizer state: unknown for {self.optimizer} until its first step"
        when = "after a step" if self.optimizer_state_source == "measured" else "before its first step"
        return (
            f"optimizer state {self.optimizer_state_mib:.2f} "
            f"({self.optimizer_state_source} for {self.optimizer} {when})"
        )


def model_report(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, model_name: str = ""
) -> ModelReport:
    params = list(model.parameters())  # shared (tied) parameters appear once
    trainable = [p for p in params if p.requires_grad]
    modules = [
        LoraModuleReport(
            name=name, rank=p.rank, in_features=p.in_features, out_features=p.out_features,
            params=sum(t.numel() for t in _adapter_tensors(p)),
            trainable=sum(t.numel() for t in _adapter_tensors(p) if t.requires_grad),
        )
        for name, p in lora_pairs(model).items()
    ]
    grads = [p.grad for p in trainable if p.grad is not None]
    adapter_ids = {id(t) for pair in lora_pairs(model).values() for t in _adapter_tensors(pair)}
    other: dict[str, int] = {}
    for name, p in model.named_parameters():  # shared parameters once, as in the totals
        if p.requires_grad and id(p) not in adapter_ids:
            module = name.rsplit(".", 1)[0] if "." in name else name
            other[module] = other.get(module, 0) + p.numel()
    report = ModelReport(
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in trainable),
        lora_params=sum(m.params for m in modules),
        lora_modules=modules,
        other_trainable=other,
        weights_bytes=sum(_nbytes(p) for p in params),
        # Before a backward pass every trainable parameter will get a grad of its own dtype.
        grads_bytes=sum(_nbytes(g) for g in grads) if grads else sum(_nbytes(p) for p in trainable),
        grads_source="measured" if grads else "estimated",
        model_name=model_name,
    )
    if optimizer is not None:
        report.optimizer = type(optimizer).__name__
        measured = optimizer_state_bytes(optimizer)
        if measured:
            report.optimizer_state_bytes, report.optimizer_state_source = measured, "measured"
        else:
            estimate = estimate_optimizer_state_bytes(optimizer)
            report.optimizer_state_bytes = estimate
            report.optimizer_state_source = "unknown" if estimate is None else "estimated"
    return report


def _adapter_tensors(pair: LoraPair) -> list[torch.Tensor]:
    """A, B and, with DoRA, the magnitude vector."""
    return [pair.A, pair.B] + ([pair.magnitude] if pair.magnitude is not None else [])


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (0 before the first step)."""
    return sum(
        _nbytes(value)
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def estimate_optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int | None:
    """What ``optimizer_state_bytes`` will measure after the first step, from the optimizer's
    state layout; None for an optimizer class with no registered estimator."""
    for cls in type(optimizer).__mro__:
        if cls.__name__ in STATE_ESTIMATORS:
            estimator = STATE_ESTIMATORS.get(cls.__name__)
            return sum(
                estimator(p, group)
                for group in optimizer.param_groups
                for p in group["params"]
                if p.requires_grad
            )
    return None


def _scalar_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _upcast_size(param: nn.Parameter) -> int:
    """Adafactor and CAME upcast fp16/bf16 grads to fp32 and keep their state in that dtype."""
    return _scalar_bytes(torch.promote_types(param.dtype, torch.float32))


def _factored_numel(param: nn.Parameter) -> int:
    """A row and a column accumulator, as Adafactor and CAME keep for matrices."""
    rows = math.prod(param.shape[:-1])
    cols = math.prod(param.shape[:-2]) * param.shape[-1]
    return rows + cols


@STATE_ESTIMATORS.register("AdamW")
@STATE_ESTIMATORS.register("Adam")
def _adam_state(param: nn.Parameter, group: dict) -> int:
    moments = 3 if group.get("amsgrad") else 2  # exp_avg, exp_avg_sq (+ max_exp_avg_sq)
    # torch keeps "step" as a 0-d tensor of the default float dtype.
    return moments * _nbytes(param) + _scalar_bytes(torch.get_default_dtype())


@STATE_ESTIMATORS.register("SGD")
def _sgd_state(param: nn.Parameter, group: dict) -> int:
    return _nbytes(param) if group.get("momentum", 0) else 0  # momentum_buffer


@STATE_ESTIMATORS.register("Adafactor")
def _adafactor_state(param: nn.Parameter, group: dict) -> int:
    first_moment = param.numel() if group.get("beta1") is not None else 0
    second_moment = _factored_numel(param) if param.dim() >= 2 else param.numel()
    # + "RMS", a 0-d tensor of the upcast dtype.
    return (first_moment + second_moment + 1) * _upcast_size(param)


@STATE_ESTIMATORS.register("CAME")
def _came_state(param: nn.Parameter, group: dict) -> int:
    # exp_avg always; then squared-gradient and instability accumulators, both factored for
    # matrices (row + column each), or one full exp_avg_sq for vectors.
    moments = param.numel() + (2 * _factored_numel(param) if param.dim() >= 2 else param.numel())
    return moments * _upcast_size(param) + _scalar_bytes(param.dtype)  # "RMS": the param's dtype
