"""A real recording process for the kill tests: LoRA layers whose weights after step s are known
exactly (``expected(s)``), so a test can check every stored snapshot bit for bit after killing it.

The tests fork it (``run`` as a multiprocessing target: no second torch import, so a kill test
takes a fraction of a second); ``python tests/record_worker.py OUT.h5 FLUSH MAX`` runs it alone."""
from __future__ import annotations

import signal
import sys
import time

import torch

from lorascope.config import RecordConfig
from lorascope.lora.layer import LoRALinear
from lorascope.record import Recorder

WIDTH, RANK, LAYERS = 256, 16, 4


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[LoRALinear(torch.nn.Linear(WIDTH, WIDTH), RANK, 2.0 * RANK)
                                 for _ in range(LAYERS)])


def expected(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B of every layer after optimizer step ``step``."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(RANK, WIDTH, generator=g) + step
    B = torch.randn(WIDTH, RANK, generator=g) - step
    return A, B


def run(path: str, flush_every: int, max_steps: int, ready=None, last_step=None) -> None:
    """``ready`` (an Event) is set once recording started; ``last_step`` (a shared int) holds
    the last optimizer step whose hook returned."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    model = build()
    layers = list(model)

    def set_weights(step: int) -> None:
        A, B = expected(step)
        with torch.no_grad():
            for layer in layers:
                layer.A.copy_(A)
                layer.B.copy_(B)

    set_weights(0)
    cfg = RecordConfig(every=1, flush_every_steps=flush_every, flush_every_seconds=3600)
    with Recorder(path, model, cfg) as rec:
        rec.start()
        if ready is not None:
            ready.set()
        for step in range(1, max_steps + 1):
            time.sleep(0.002)  # a training step's worth of work
            set_weights(step)
            rec.on_optimizer_step(step, {"loss": float(step)})
            if last_step is not None:
                last_step.value = step


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
