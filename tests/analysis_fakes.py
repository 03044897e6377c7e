"""A run with the reading API's attributes (docs/architecture.md) whose answers are known, for
the analysis tables: no HDF5, no training."""
from __future__ import annotations

import numpy as np
import pandas as pd
from report_fakes import FakeModule, FakeRecording


def lora_run(name: str = "run", seed: int = 0, T: int = 6, rank: int = 4, shape=(24, 16),
             modules=("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"), w0: bool = True,
             a_drift: float = 0.01) -> FakeRecording:
    """A run whose A starts uniform and drifts (Gaussian steps of `a_drift`: a large one buries the
    uniform start under Gaussian noise), and whose B starts at exactly zero and grows."""
    rng = np.random.default_rng(seed)
    out_f, in_f = shape
    mods = {}
    for k, mname in enumerate(modules):
        A = np.empty((T, rank, in_f), np.float32)
        B = np.empty((T, out_f, rank), np.float32)
        A[0] = rng.uniform(-0.25, 0.25, (rank, in_f))
        B[0] = 0.0
        for t in range(1, T):
            A[t] = A[t - 1] + a_drift * rng.normal(size=(rank, in_f))
            B[t] = B[t - 1] + 0.01 * rng.normal(size=(out_f, rank))
        mods[mname] = FakeModule(A=A, B=B, scaling=2.0, layer_index=k, W0=rng.normal(size=shape).astype(np.float32) if w0 else None)
    steps = np.arange(T, dtype=np.int64) * 5
    scal = pd.DataFrame({"step": np.arange(1, steps[-1] + 1), "loss": np.linspace(3, 2, steps[-1])})
    return FakeRecording(name, steps, mods, scal)


def with_gradients(rec: FakeRecording, micro_steps: dict[int, int], seed: int = 0) -> FakeRecording:
    """Gives a fake run Gaussian micro-step gradients of A and B, `micro_steps[s]` rows for
    optimizer step s (the reading API's `grad_steps`, `grad_micro_steps`, `grad_A`, `grad_B`)."""
    rng = np.random.default_rng(seed)
    steps = np.concatenate([np.full(k, s) for s, k in micro_steps.items()]).astype(np.int64)
    rec.grad_steps = steps
    rec.grad_micro_steps = np.arange(1, len(steps) + 1)
    for m in rec.modules.values():
        m.grad_A = rng.normal(size=(len(steps), *m.A.shape[1:])).astype(np.float32)
        m.grad_B = rng.normal(size=(len(steps), *m.B.shape[1:])).astype(np.float32)
    return rec
