"""In-memory recordings that follow the reading API's contract (docs/architecture.md), for report
tests that need control over names, shapes and values without training anything."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class FakeModule:
    A: np.ndarray  # (T, r, in)
    B: np.ndarray  # (T, out, r)
    scaling: float
    layer_index: int | None
    W0: np.ndarray | None = None
    kind: str = "lorascope.LoRALinear"
    init: str = "kaiming_uniform"
    attrs: dict = field(default_factory=dict)

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
class FakeRecording:
    run_name: str
    steps: np.ndarray
    modules: dict[str, FakeModule]
    scalars: pd.DataFrame
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    status: str = "complete"
    format_version: int = 1

    @property
    def scalar_columns(self) -> dict[str, np.ndarray]:
        """The scalars as numpy columns, as `Recording.scalar_columns`."""
        return {c: self.scalars[c].to_numpy() for c in self.scalars.columns}

    def index_of(self, step: int) -> int:
        return int(np.argmin(np.abs(self.steps - step)))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def fake_recording(
    name: str = "run",
    *,
    seed: int = 0,
    steps: int = 12,
    modules: tuple[str, ...] = ("h.0.attn.c_attn", "h.1.mlp.c_fc"),
    rank: int = 4,
    shape: tuple[int, int] = (24, 16),
    with_w0: bool = True,
    optimizer: str = "adamw",
) -> FakeRecording:
    """A run whose A drifts from uniform towards a narrower normal and whose B grows from zero,
    roughly what 000_*.txt saw under AdamW."""
    rng = np.random.default_rng(seed)
    T = steps + 1
    out_f, in_f = shape
    mods = {}
    for k, mname in enumerate(modules):
        A0 = rng.uniform(-1, 1, size=(rank, in_f)) / np.sqrt(in_f)
        mix = np.linspace(0, 1, T)[:, None, None]
        A = (1 - mix) * A0 + mix * rng.normal(0, 0.5 / np.sqrt(in_f), size=(T, rank, in_f))
        B = mix * rng.normal(0, 0.02, size=(T, out_f, rank))
        W0 = rng.normal(0, 0.1, size=(out_f, in_f)) if with_w0 else None
        mods[mname] = FakeModule(A.astype(np.float32), B.astype(np.float32), 2.0, k, W0)
    step_axis = np.arange(T, dtype=np.int64)
    scalars = pd.DataFrame({
        "step": np.arange(1, T, dtype=np.int64),
        "loss": 3.0 * np.exp(-np.arange(1, T) / (5 + seed)) + 0.5,
        "lr": np.linspace(1e-3, 0, T - 1),
        "eval_loss": np.where(np.arange(1, T) % 4 == 0, 2.0, np.nan),
    })
    config = {"optim": {"optimizer": optimizer, "lr": 1e-3}, "lora": {"rank": rank, "alpha": 2.0 * rank},
              "seed": seed}
    return FakeRecording(name, step_axis, mods, scalars, config)
