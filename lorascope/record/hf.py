"""Recording a Hugging Face ``Trainer`` run: ``trainer.add_callback(LorascopeCallback("run.h5"))``.

The Trainer gives no hook between the micro-batches of an accumulation cycle that sees clean
per-micro-batch gradients (clipping happens before ``on_pre_optimizer_step``), so with
``record.grads`` this adapter stores one gradient per optimizer step: the accumulated gradient as
the optimizer receives it. Weights are captured at ``on_step_end``; loss, learning rate, grad
norm and eval metrics come from the Trainer's own log (``on_log``).

Under fp16 the Trainer's optimizer is accelerate's ``AcceleratedOptimizer`` holding a GradScaler:
the adapter records its scale and whether it skipped the step (``loss_scale``, ``skipped``), and
divides a gradient the scaler has not unscaled yet (no clipping) by the scale, so that recorded
gradients are true gradients as in lorascope's own loop."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lorascope.config import RecordConfig
from lorascope.errors import UsageError
from lorascope.record.recorder import Recorder, group_lrs

__all__ = ["LorascopeCallback"]

# the Trainer's log names → lorascope's scalar names. `eval_samples` (the eval set size) is in the
# log only when the user's script puts it there, as the transformers example scripts do; the
# Trainer itself logs only a rate of examples per second, from which no count is derived
_RENAMES = {"learning_rate": "lr", "eval_samples": "eval_examples"}


class LorascopeCallback(TrainerCallback):
    def __init__(self, path: str | Path, config: RecordConfig | None = None, *,
                 run_name: str = "", environment: dict | None = None, overwrite: bool = False) -> None:
        """``overwrite``: replace a recording already at ``path`` (refused otherwise, here, before
        the Trainer starts)."""
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise UsageError(f"{self.path} already exists; pass overwrite=True to replace it, or choose another path")
        self.overwrite = overwrite
        self.config = config or RecordConfig()
        self.run_name = run_name
        self.environment = environment
        self.recorder: Recorder | None = None
        self._applied_lrs: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs: Any):
        self.recorder = Recorder(
            self.path, model, self.config, run_name=self.run_name or self.path.stem,
            run_config={"trainer": json.loads(args.to_json_string())},
            environment=self.environment, total_steps=state.max_steps or None, overwrite=self.overwrite,
        )
        self.recorder.start(optimizer, step=state.global_step)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs: Any):
        if self.recorder is not None:
            micro = (state.global_step + 1) * args.gradient_accumulation_steps
            self.recorder.on_micro_step(micro, loss_scale=_pending_scale(optimizer))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs: Any):
        # the lr this update applied: the Trainer steps its scheduler before on_step_end
        if self.recorder is not None and optimizer is not None:
            self._applied_lrs = group_lrs(optimizer)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs: Any):
        if self.recorder is not None:
            self.recorder.on_optimizer_step(state.global_step, {**self._applied_lrs, **_scaler_scalars(optimizer)},
                                            optimizer)

    def on_log(self, args, state, control, logs=None, **kwargs: Any):
        if self.recorder is None or not logs:
            return
        values = {_RENAMES.get(k, k): float(v) for k, v in logs.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            self.recorder.log_scalars(state.global_step, values)

    def on_train_end(self, args, state, control, **kwargs: Any):
        if self.recorder is not None:
            self.recorder.close("complete")
            self.recorder = None


def _scaler(optimizer) -> Any:
    scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer under fp16
    return scaler if scaler is not None and scaler.is_enabled() else None


def _scaler_scalars(optimizer) -> dict[str, float]:
    """``skipped`` and ``loss_scale`` (the scale after the step) of an fp16 Trainer step; {} without
    loss scaling, where the Trainer never skips a step."""
    scaler = _scaler(optimizer)
    if scaler is None:
        return {}
    return {"skipped": float(bool(getattr(optimizer, "step_was_skipped", False))),
            "loss_scale": float(scaler.get_scale())}


def _pending_scale(optimizer) -> float:
    """The factor the gradients still carry before the optimizer step: the scale, unless the
    Trainer's clipping already unscaled them (torch's GradScaler keeps that per optimizer)."""
    scaler = _scaler(optimizer)
    if scaler is None:
        return 1.0
    from torch.amp.grad_scaler import OptState

    inner = getattr(optimizer, "optimizer", optimizer)
    stage = scaler._per_optimizer_states[id(inner)]["stage"]
    return 1.0 if stage is OptState.UNSCALED else float(scaler.get_scale())
