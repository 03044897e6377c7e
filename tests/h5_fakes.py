"""Small recordings written straight through the writer's ``RecordingFile`` (no torch, no
training), for the reader's validation and fuzz tests, and the one function that touches every
part of a recording the way a user of ``lorascope.open`` can."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import lorascope
from lorascope.h5.file import FileLayout, ModuleSpec, RecordingFile
from lorascope.h5.format import FORMAT_VERSION

__all__ = ["write_recording", "read_everything", "MODULES"]

MODULES = ("model.layers.0.q_proj", "model.layers.1.v_proj")


def write_recording(path: Path, snapshots: int = 4, live: bool = False, config: dict | None = None,
                    status: str = "complete") -> RecordingFile:
    """Two modules (rank 2, 8 -> 6, with W0, gradients and one optimizer-state key), a few
    snapshots, scalars and an eval metric; closed with ``status`` unless `live`. ``config`` is the
    run config the file says it was recorded with."""
    specs = [
        ModuleSpec(name, {"name": name, "index": i, "rank": 2, "alpha": 4.0, "scaling": 2.0, "kind": "test",
                          "init": "", "in_features": 8, "out_features": 6, "layer_index": i},
                   (2, 8), (6, 2), w0=np.arange(48, dtype=np.float32).reshape(6, 8),
                   state={"A": [("exp_avg", (2, 8))]})
        for i, name in enumerate(MODULES)
    ]
    root = {"lorascope_format": FORMAT_VERSION, "run_name": "fake", "config": {"seed": 0} if config is None else config,
            "environment": {"python": "3"}, "storage_dtype": "float32", "writer_pid": 1, "writer_host": "nowhere"}
    file = RecordingFile(Path(path), FileLayout(root, specs, grads=True, optimizer_state=True,
                                                scalar_columns=("loss", "lr")))
    rng = np.random.default_rng(0)
    for t in range(snapshots):
        file.write_snapshot(t, t, float(t), [rng.normal(size=s).astype(np.float32)
                                             for _ in MODULES for s in ((2, 8), (6, 2))])
        if t:
            file.write_grads(t, t, 1.0, [rng.normal(size=s).astype(np.float32) for _ in MODULES for s in ((2, 8), (6, 2))])
            file.write_state(t, [rng.normal(size=(2, 8)).astype(np.float32) for _ in MODULES])
            file.add_update_norms(t, np.ones((len(MODULES), 4), np.float32))
            file.add_scalars(t, {"loss": 1.0 / t, "lr": 1e-3})
    file.add_scalars(snapshots - 1, {"eval_loss": 0.5}, optimizer_step=False)
    file.commit()
    if not live:
        file.close(status)
    return file


def read_everything(path: Path) -> list[np.ndarray]:
    """Every array a user can get from the recording, read whole."""
    out: list[np.ndarray] = []
    with lorascope.open(path) as rec:
        out += [rec.steps, rec.micro_steps, rec.times, rec.grad_steps, rec.state_steps]
        out.append(rec.scalars.to_numpy(dtype=float, na_value=np.nan))
        for m in rec.modules.values():
            out += [m.A[:], m.B[:]]
            if len(m.A):
                out.append(m.delta_w(-1))
            for lazy in (m.grad_A, m.grad_B, *m.state_A.values(), *m.state_B.values()):
                if lazy is not None:
                    out.append(lazy[:])
            if m.W0 is not None:
                out.append(m.W0)
            out.append(m.updates.to_numpy(dtype=float))
    return out
