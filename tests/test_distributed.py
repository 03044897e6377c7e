"""Two CPU processes under torchrun (gloo) record the same run as one process with the same
global batch, up to float reduction order; only rank 0 writes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lorascope

ROOT = Path(__file__).resolve().parents[1]
# tiny-llama has no dropout, and causal_lm chunks are all full length, so each rank's mean loss
# over its half of the batch averages to the one-process loss exactly (up to rounding).
ARGS = ["record", "--model", "tiny-llama", "--task", "causal_lm", "--steps", "3", "--batch-size", "4",
        "--grad-accum", "2", "--set", "data.max_examples=64", "--set", "data.max_length=32",
        "--set", "generate_samples=0", "--set", "eval_batches=1", "--layers", ":"]


def run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.mark.slow
def test_two_processes_record_what_one_process_records(tmp_path):
    single, ddp = tmp_path / "single.h5", tmp_path / "ddp.h5"
    run([sys.executable, str(ROOT / "cli.py"), *ARGS, "-o", str(single)], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
         str(ROOT / "cli.py"), *ARGS, "-o", str(ddp)], tmp_path)
    with lorascope.open(single) as one, lorascope.open(ddp) as two:
        assert two.environment["world_size"] == 2
        assert list(one.steps) == list(two.steps) == [0, 1, 2, 3]
        for name, m in one.modules.items():
            np.testing.assert_allclose(two.modules[name].A[:], m.A[:], atol=2e-6, rtol=1e-4)
            np.testing.assert_allclose(two.modules[name].B[:], m.B[:], atol=2e-6, rtol=1e-4)
        np.testing.assert_allclose(two.scalars["loss"], one.scalars["loss"], rtol=1e-5)
    assert sorted(p.name for p in tmp_path.glob("ddp*")) == ["ddp.adapters.safetensors", "ddp.h5", "ddp.state.pt"]
