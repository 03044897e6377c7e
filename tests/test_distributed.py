"""Two CPU processes under torchrun (gloo) record the same run as one process with the same
global batch, up to float reduction order: with DDP (only rank 0 records) and with FSDP2
(``parallel = "fsdp"``: every rank joins the gathers of each snapshot, rank 0 writes)."""
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
        "--set", "generate_samples=0", "--set", "eval_batches=1", "--layers", ":",
        # the SVD init keeps an offset beside the base: W0 is then computed from sharded weights
        "--set", "lora.init=svd"]
# what FSDP2 must also gather: per-micro-step gradients, AdamW's moments, W0
FULL = ["--set", "record.grads=true", "--set", "record.optimizer_state=true", "--set", "record.base_weights=true"]


def run(cmd, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def torchrun(*args: str) -> list[str]:
    # --standalone: a free port of its own, so that parallel runs of the suite never collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(ROOT / "cli.py"), *args]


def assert_one_voice(done: subprocess.CompletedProcess) -> None:
    """Rank 0 alone prints the run's outcome."""
    assert done.stdout.count("next: lorascope report") == 1, done.stdout


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one-process")
    run([sys.executable, str(ROOT / "cli.py"), *ARGS, *FULL, "-o", str(folder / "single.h5")], folder)
    return folder / "single.h5"


def assert_same_weights(one, two, atol: float, rtol: float) -> None:
    assert two.environment["world_size"] == 2
    assert list(one.steps) == list(two.steps) == [0, 1, 2, 3]
    for name, m in one.modules.items():
        np.testing.assert_allclose(two.modules[name].A[:], m.A[:], atol=atol, rtol=rtol)
        np.testing.assert_allclose(two.modules[name].B[:], m.B[:], atol=atol, rtol=rtol)
    np.testing.assert_allclose(two.scalars["loss"], one.scalars["loss"], rtol=1e-5)


@pytest.mark.slow
def test_two_processes_record_what_one_process_records(tmp_path, single):
    ddp = tmp_path / "ddp.h5"
    assert_one_voice(run(torchrun(*ARGS, "-o", str(ddp)), tmp_path))
    with lorascope.open(single) as one, lorascope.open(ddp) as two:
        assert_same_weights(one, two, atol=2e-6, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.glob("ddp*")) == ["ddp.adapters.safetensors", "ddp.h5", "ddp.state.pt"]


@pytest.mark.slow
def test_fsdp2_training_records_what_one_process_records(tmp_path, single):
    from safetensors.numpy import load_file

    fsdp = tmp_path / "fsdp.h5"
    assert_one_voice(run(torchrun(*ARGS, *FULL, "--set", "parallel=fsdp", "-o", str(fsdp)), tmp_path))
    with lorascope.open(single) as one, lorascope.open(fsdp) as two:
        assert_same_weights(one, two, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(two.scalars["grad_norm"], one.scalars["grad_norm"], rtol=1e-5)
        assert list(two.grad_steps) == list(one.grad_steps) and list(two.grad_micro_steps) == list(one.grad_micro_steps)
        for name, m in one.modules.items():
            s = two.modules[name]
            for series in ("grad_A", "grad_B"):
                np.testing.assert_allclose(getattr(s, series)[:], getattr(m, series)[:], atol=1e-5, rtol=1e-5)
            for key, values in m.state_B.items():
                np.testing.assert_allclose(s.state_B[key][:], values[:], atol=1e-5, rtol=1e-5)
            np.testing.assert_array_equal(s.W0, m.W0)
            np.testing.assert_allclose(s.updates.to_numpy(), m.updates.to_numpy(), atol=1e-5, rtol=1e-5)
    # the adapters are gathered whole; no trainer state: a sharded run cannot be resumed
    assert sorted(p.name for p in tmp_path.glob("fsdp*")) == ["fsdp.adapters.safetensors", "fsdp.h5"]
    saved, reference = load_file(tmp_path / "fsdp.adapters.safetensors"), load_file(single.with_name("single.adapters.safetensors"))
    assert sorted(saved) == sorted(reference)
    for key, value in reference.items():
        np.testing.assert_allclose(saved[key], value, atol=1e-5, rtol=1e-5)


class _Exited(Exception):
    pass


@pytest.mark.parametrize("outcome, code, printed", [(None, 0, ""), (0, 0, ""), (2, 2, ""), ("error: bad", 1, "error: bad\n")])
def test_a_torchrun_process_ends_without_interpreter_shutdown(monkeypatch, capsys, outcome, code, printed):
    """Under torchrun (WORLD_SIZE > 1) the command line ends with os._exit and the exit code the
    command gave, its output flushed; alone, it returns as any program does."""
    import lorascope.cli as cli

    def app():
        print("done")
        raise SystemExit(outcome)

    def exit_now(status):
        raise _Exited(status)

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(os, "_exit", exit_now)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(_Exited) as ended:
        cli.main()
    assert ended.value.args == (code,)
    out = capsys.readouterr()
    assert out.out == "done\n" and out.err == printed
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit):
        cli.main()
