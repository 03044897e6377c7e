"""An in-memory object with the reading API's attributes (docs/architecture.md), so that the
analysis tables are tested on series whose answers are known, without HDF5 or training."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Module:
    A: np.ndarray  # (T, r, in)
    B: np.ndarray  # (T, out, r)
    scaling: float = 2.0
    layer_index: int | None = 0
    W0: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    kind: str = "lorascope.LoRALinear"
    init: str = "kaiming_uniform"

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    @property
    def alpha(self) -> float:
        return self.scaling * self.rank

    @property
    def in_features(self) -> int:
        return self.A.shape[2]

    @property
    def out_features(self) -> int:
        return self.B.shape[1]

    def delta_w(self, t: int) -> np.ndarray:
        return self.scaling * self.B[t] @ self.A[t]


@dataclass
class Recording:
    run_name: str
    steps: np.ndarray
    modules: dict[str, Module]
    scalars: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"step": [], "loss": []}))
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    status: str = "complete"
    format_version: int = 1


def lora_run(name: str = "run", seed: int = 0, T: int = 6, rank: int = 4, shape=(24, 16),
             modules=("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"), w0: bool = True) -> Recording:
    """A run whose A starts uniform and drifts, and whose B starts at exactly zero and grows."""
    rng = np.random.default_rng(seed)
    out_f, in_f = shape
    mods = {}
    for k, mname in enumerate(modules):
        A = np.empty((T, rank, in_f), np.float32)
        B = np.empty((T, out_f, rank), np.float32)
        A[0] = rng.uniform(-0.25, 0.25, (rank, in_f))
        B[0] = 0.0
        for t in range(1, T):
            A[t] = A[t - 1] + 0.01 * rng.normal(size=(rank, in_f))
            B[t] = B[t - 1] + 0.01 * rng.normal(size=(out_f, rank))
        mods[mname] = Module(A=A, B=B, layer_index=k, W0=rng.normal(size=shape).astype(np.float32) if w0 else None)
    steps = np.arange(T, dtype=np.int64) * 5
    scal = pd.DataFrame({"step": np.arange(1, steps[-1] + 1), "loss": np.linspace(3, 2, steps[-1])})
    return Recording(name, steps, mods, scal)
