"""The training loop: gradient accumulation, AMP (fp16 + GradScaler or bf16), clipping, the LR
schedule, periodic evaluation, and the Recorder's three hooks. Read it top to bottom: one optimizer
step is `for micro in range(accum): forward, backward, on_micro_step` then `unscale, clip, step,
on_optimizer_step`. The same code runs on CPU and CUDA; only the device differs.

Under fp16 each micro-step's backward is scaled by the GradScaler's current scale, which the
hooks receive (`on_micro_step(..., loss_scale=)`) so that they can divide it out. A step whose
gradients overflowed is skipped by the scaler, which halves its scale: the step's scalars then
say `skipped = 1` and `loss_scale` is the lowered scale (the one the next step uses).

The loop stops at a step boundary on SIGINT/SIGTERM/SIGHUP (``StopOnSignal``; a second Ctrl-C
aborts at once), so that the recording and the adapter checkpoint always describe a whole number
of optimizer steps."""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
import torch.distributed as dist

from lorascope.train.amp import Precision
from lorascope.train.distributed import global_sums
from lorascope.train.evaluate import evaluate

__all__ = ["StepHooks", "LoopState", "LoopResult", "train_loop", "StopOnSignal"]


class StepHooks(Protocol):
    """What the loop calls; the Recorder implements it, and so does anything else that wants to
    watch a run (the loop never imports the Recorder)."""

    def on_micro_step(self, micro_step: int, loss_scale: float = 1.0) -> None: ...
    def on_optimizer_step(self, step: int, scalars: dict[str, float], optimizer: Any = None) -> None: ...
    def log_eval(self, step: int, metrics: dict[str, float]) -> None: ...


@dataclass
class LoopState:
    """Where a run stands; saved in checkpoints so that --resume continues exactly."""

    step: int = 0  # optimizer steps taken
    micro_step: int = 0  # micro-batches seen
    tokens: int = 0  # non-padding tokens seen
    skipped_steps: int = 0


@dataclass
class LoopResult:
    state: LoopState
    interrupted: bool
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    wall_time: float = 0.0


class StopOnSignal:
    """One signal policy for a run's whole life (setup, training, evaluation, saving): the first
    SIGINT, SIGTERM or SIGHUP (a closed terminal) is a request to stop, which each phase honours
    at its next boundary (the loop at a step, an evaluation at a batch). A second Ctrl-C aborts
    at once, except inside ``protect()``, where a save must finish: that one waits too."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first signal received; the CLI exits 128 + signum
        self._previous: dict[int, Any] = {}
        self._protected = 0

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and not self._protected:
            raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now
        self.requested = True
        self.signum = self.signum or signum

    @contextlib.contextmanager
    def protect(self) -> Iterator[None]:
        """No signal interrupts what runs inside (closing the recording, saving the checkpoint)."""
        self._protected += 1
        try:
            yield
        finally:
            self._protected -= 1

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _forever(loader: Iterable) -> Iterator:
    """Cycles through the loader epoch after epoch (steps, not epochs, bound a run)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the training data loader is empty")


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _count_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def _update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, finite: bool) -> tuple[bool, float]:
    """Applies the optimizer step unless the gradients are not finite; returns (skipped, the loss
    scale after the step). Without a scaler a NaN/Inf loss or gradient never reaches the weights.
    With one, the scaler decides: on inf/NaN gradients it skips the update and multiplies its
    scale by its backoff factor, the only way the scale drops, so a drop is a skip."""
    if not scaler.is_enabled():
        if finite:
            optimizer.step()
        return not finite, 1.0
    before = float(scaler.get_scale())
    scaler.step(optimizer)
    scaler.update()
    after = float(scaler.get_scale())
    return after < before, after


def _advance(scheduler: Any, skipped: bool) -> None:
    """Steps the LR schedule, past a skipped update too: the schedule is a function of the step
    number, skipped steps included. torch warns when a run's first update was skipped, taking it
    for calls in the wrong order; here it is an fp16 overflow, expected and already recorded."""
    if scheduler is None:
        return
    with warnings.catch_warnings():
        if skipped:
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


def train_loop(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_data: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    precision: Precision,
    total_steps: int,
    grad_accum: int = 1,
    max_grad_norm: float = 0.0,
    hooks: StepHooks | None = None,
    lrs: Callable[[], dict[str, float]] | None = None,
    eval_data: Iterable[dict[str, torch.Tensor]] | None = None,
    eval_every: int = 0,
    eval_batches: int = 4,
    task: str = "causal_lm",
    state: LoopState | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress: Callable[[LoopState, float], None] | None = None,
    stop: StopOnSignal | None = None,
) -> LoopResult:
    state = state or LoopState()
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    scaler = scaler or precision.scaler(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    clip_norm = max_grad_norm if max_grad_norm > 0 else math.inf
    batches = _forever(train_data)
    for _ in range(state.micro_step):
        # On resume, replay the data order up to where the run stopped (the loaders are seeded),
        # so a resumed run sees the batches the uninterrupted one would have.
        next(batches)
    result = LoopResult(state=state, interrupted=False)
    started = time.perf_counter()

    model.train()
    optimizer.zero_grad(set_to_none=True)
    while state.step < total_steps:
        if stop is not None and stop.requested:
            result.interrupted = True
            break
        step_loss, step_tokens = 0.0, 0
        for _ in range(grad_accum):
            batch = _to_device(next(batches), device)
            with precision.autocast(device):
                loss = model(**batch).loss / grad_accum  # mean over the accumulation cycle
            scaler.scale(loss).backward()
            step_loss += float(loss.detach())
            state.micro_step += 1
            step_tokens += _count_tokens(batch)
            if hooks is not None:
                hooks.on_micro_step(state.micro_step, loss_scale=float(scaler.get_scale()) if scaler.is_enabled() else 1.0)

        if world_size > 1:  # what rank 0 records describes the global batch
            loss_sum, step_tokens = global_sums(step_loss, step_tokens)
            step_loss = loss_sum / world_size  # each rank's loss is the mean over its share
        state.tokens += int(step_tokens)
        group_lrs = lrs() if lrs is not None else {}  # the lr this update applies, read before it
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, clip_norm))
        skipped, loss_scale = _update(optimizer, scaler, math.isfinite(step_loss) and math.isfinite(grad_norm))
        optimizer.zero_grad(set_to_none=True)
        _advance(scheduler, skipped)
        state.step += 1
        state.skipped_steps += int(skipped)
        result.losses.append(step_loss)

        scalars = {
            "loss": step_loss,
            "grad_norm": grad_norm,
            "clipped": float(grad_norm > clip_norm),
            "loss_scale": loss_scale,
            "skipped": float(skipped),
            "tokens": float(state.tokens),
            "micro_step": float(state.micro_step),
        }
        if group_lrs:
            scalars["lr"] = next(iter(group_lrs.values()))
            scalars.update({f"lr_{name}": value for name, value in group_lrs.items()})
        if hooks is not None:
            hooks.on_optimizer_step(state.step, scalars, optimizer=optimizer)

        if eval_data is not None and eval_every > 0 and state.step % eval_every == 0 and state.step < total_steps:
            metrics = evaluate(model, eval_data, device, precision, task, max_batches=eval_batches,
                               stop=None if stop is None else (lambda: stop.requested))
            if metrics:  # an evaluation a signal cut short is no measurement
                result.evals.append({"step": state.step, **metrics})
                if hooks is not None:
                    hooks.log_eval(state.step, metrics)
            model.train()
        if progress is not None:
            progress(state, step_loss)

    result.wall_time = time.perf_counter() - started
    return result
