"""Ctrl-C, SIGTERM and SIGHUP sent to a real `lorascope record` process in the middle of training:
the loop stops at a step boundary, the recorder drains its queue, the file says "interrupted" and
holds every step up to the stop, the checkpoint holds the last step's weights, and `--resume`
finishes the planned steps with no step twice or missing, the same numbers an uninterrupted run
gives. The same signals in the other phases of a run (setup, the final evaluation, saving) end it
the same clean, resumable way. (SIGKILL at random moments is `test_record_kill.py`; many repetitions are in
`benchmarks/kill_stress.py`.)"""
from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lorascope
from lorascope.outputs import side_files
from tests.cli_process import QUICK_RECORD, run_cli, start_cli, warm  # noqa: F401 - fixture

STEPS = 60
# nothing is committed before close unless the drain works: a lost queue would show as lost steps
ARGS = [*QUICK_RECORD, "--steps", str(STEPS), "--set", "record.flush_every_steps=100000",
        "--set", "record.flush_every_seconds=3600"]


def _record(path: Path) -> list[str]:
    return ["record", "-o", str(path), *ARGS]


def _stopped_step(stdout: str) -> int:
    found = re.search(r"interrupted at step (\d+)", stdout)
    assert found, stdout
    return int(found.group(1))


def _check_interrupted(path: Path, stopped: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every step up to the stop is in the file, and only those; returns the last A and B."""
    with lorascope.open(path) as rec:
        assert rec.stored_status == "interrupted"
        assert rec.steps.tolist() == list(range(stopped + 1))
        scalars = rec.scalars
        assert scalars["step"].tolist() == list(range(1, stopped + 1))
        for column in ("loss", "grad_norm", "lr", "skipped", "tokens", "loss_scale"):
            assert np.isfinite(scalars[column].to_numpy()).all(), column
        assert (scalars["skipped"] == 0).all()
        return {name: (m.A[-1], m.B[-1]) for name, m in rec.modules.items()}


def _check_checkpoint(path: Path, last: dict[str, tuple[np.ndarray, np.ndarray]], stopped: int) -> None:
    side = side_files(path)
    adapters, state = side.adapters, side.state
    tensors = load_file(str(adapters))
    for name, (A, B) in last.items():  # the checkpoint is the weights of the last recorded step
        np.testing.assert_array_equal(tensors[f"{name}.A"].numpy(), A)
        np.testing.assert_array_equal(tensors[f"{name}.B"].numpy(), B)
    payload = torch.load(state, weights_only=True)
    assert json.loads(payload["loop"])["step"] == stopped
    assert not list(path.parent.glob("*.tmp"))  # the atomic saves left nothing behind


@pytest.fixture(scope="module")
def uninterrupted(warm) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every snapshot of A and B of the same run, trained straight through."""
    straight = warm / "straight.h5"
    assert run_cli(_record(straight), warm, "fork").code == 0
    with lorascope.open(straight) as rec:
        return {name: (m.A[:], m.B[:]) for name, m in rec.modules.items()}


# Each signal in a forked child; one in a fresh interpreter through the real entry point (the
# handlers are the same for the three, and a fresh start costs ~20 s of imports per process).
MID_TRAINING = [pytest.param("fork", s, id=f"{s.name}-fork") for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
MID_TRAINING.append(pytest.param("exec", signal.SIGTERM, id="SIGTERM-exec", marks=pytest.mark.slow))


@pytest.mark.parametrize("launcher, signum", MID_TRAINING)
def test_signal_mid_training_then_resume(tmp_path, warm, uninterrupted, launcher, signum):
    path = tmp_path / "run.h5"
    proc = start_cli(_record(path), tmp_path, launcher)
    proc.wait_for(f"step {STEPS // 10}/{STEPS}")  # a progress line: training is under way
    proc.signal(signum)
    done = proc.wait()
    assert done.code == 128 + signum, done.output  # 130 / 143: the shell's convention
    assert "Traceback" not in done.output
    stopped = _stopped_step(done.stdout)
    assert STEPS // 10 <= stopped < STEPS
    _check_checkpoint(path, _check_interrupted(path, stopped), stopped)

    resumed = run_cli([*_record(path), "--resume"], tmp_path, launcher)
    assert resumed.code == 0, resumed.output
    assert f"resuming {path} at step {stopped}" in resumed.stderr
    with lorascope.open(path) as rec:
        assert rec.status == "complete"
        assert rec.steps.tolist() == list(range(STEPS + 1))  # none twice, none missing
        assert rec.scalars["step"].tolist() == list(range(1, STEPS + 1))
        # the interrupted-and-resumed run is the uninterrupted run, snapshot for snapshot
        assert sorted(rec.modules) == sorted(uninterrupted)
        for name, (A, B) in uninterrupted.items():
            np.testing.assert_array_equal(rec.modules[name].A[:], A)
            np.testing.assert_array_equal(rec.modules[name].B[:], B)


def test_second_ctrl_c_aborts_at_once_and_the_file_stays_readable(tmp_path, warm):
    path = tmp_path / "run.h5"
    proc = start_cli(_record(path), tmp_path)
    proc.wait_for(f"step {STEPS // 10}/{STEPS}")
    proc.signal(signal.SIGINT)
    proc.signal(signal.SIGINT)  # the user insists: no waiting for the step boundary
    done = proc.wait()
    assert done.code == 130 and "Traceback" not in done.output, done.output
    with lorascope.open(path) as rec:
        assert rec.status == "interrupted"
        steps = rec.steps.tolist()
        assert steps == list(range(len(steps)))
        assert rec.scalars["step"].tolist() == list(range(1, len(rec.scalars) + 1))


def _killed_while_the_file_is_created() -> None:
    """SIGKILL at the worst moment of a recording's life: its layout is written but not flushed."""
    import os

    from lorascope.h5 import file as writer

    create = writer.RecordingFile._create

    def dying(self) -> None:
        create(self)
        os.kill(os.getpid(), signal.SIGKILL)

    writer.RecordingFile._create = dying


def test_sigkill_while_the_file_is_created_leaves_no_damaged_file(tmp_path, warm):
    path = tmp_path / "run.h5"
    done = run_cli(_record(path), tmp_path, prepare=_killed_while_the_file_is_created)
    assert done.code == -signal.SIGKILL
    if path.exists():  # a file at the output path must be a readable recording
        with lorascope.open(path) as rec:
            assert rec.status == "interrupted"


# --- every phase -------------------------------------------------------------------------------
PHASE_STEPS = 5
SIGNALS = [pytest.param(s, id=s.name) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]


def _signal_during(target: str, attribute: str, signum: int):
    """A ``prepare`` for the forked child: the process signals itself as ``target.attribute``
    (the phase's own work) begins, so the signal lands in that phase and no other."""

    def prepare() -> None:
        import importlib
        import os

        module = importlib.import_module(target)
        original = getattr(module, attribute)

        def signalled(*args, **kwargs):
            os.kill(os.getpid(), signum)
            return original(*args, **kwargs)

        setattr(module, attribute, signalled)

    return prepare


PHASES = {
    "setup": ("lorascope.models", "load_model"),
    "final-eval": ("lorascope.runs.session", "evaluate"),
    "saving": ("lorascope.runs.session", "_save_adapters"),
}


def _phase_record(path: Path) -> list[str]:
    return ["record", "-o", str(path), *QUICK_RECORD, "--steps", str(PHASE_STEPS)]


def _check_saved(path: Path, step: int) -> None:
    side = side_files(path)
    assert side.adapters.exists()
    assert json.loads(torch.load(side.state, weights_only=True)["loop"])["step"] == step
    assert not list(path.parent.glob("*.tmp")) and not side.lock.exists()


@pytest.mark.parametrize("signum", SIGNALS)
@pytest.mark.parametrize("phase, stopped", [("setup", 0), ("final-eval", PHASE_STEPS)], ids=["setup", "final-eval"])
def test_a_signal_before_or_after_training_ends_the_run_resumably(tmp_path, warm, phase, stopped, signum):
    path = tmp_path / "run.h5"
    done = run_cli(_phase_record(path), tmp_path, prepare=_signal_during(*PHASES[phase], signum))
    assert done.code == 128 + signum, done.output
    assert "Traceback" not in done.output
    assert _stopped_step(done.stdout) == stopped
    with lorascope.open(path) as rec:
        assert rec.stored_status == "interrupted"
        assert rec.steps.tolist() == list(range(stopped + 1))  # every step taken is in
        assert "eval_loss" not in rec.scalars  # an evaluation cut short measures nothing
    _check_saved(path, stopped)

    resumed = run_cli([*_phase_record(path), "--resume"], tmp_path)
    assert resumed.code == 0, resumed.output
    with lorascope.open(path) as rec:
        assert rec.status == "complete"
        assert rec.steps.tolist() == list(range(PHASE_STEPS + 1))
        assert rec.scalars["eval_loss"].notna().sum() == 1  # the final evaluation, once


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_while_saving_waits_for_the_save(tmp_path, warm, signum):
    """Training and the final evaluation are done: the save finishes, and the run is complete."""
    path = tmp_path / "run.h5"
    done = run_cli(_phase_record(path), tmp_path, prepare=_signal_during(*PHASES["saving"], signum))
    assert done.code == 0, done.output
    assert f"finished step {PHASE_STEPS}" in done.stdout
    with lorascope.open(path) as rec:
        assert rec.stored_status == "complete" and rec.steps.tolist() == list(range(PHASE_STEPS + 1))
    _check_saved(path, PHASE_STEPS)


def test_a_second_ctrl_c_while_saving_does_not_cost_the_checkpoint(tmp_path, warm):
    """Ctrl-C in training, and again while the checkpoint is written: the save still completes."""
    path = tmp_path / "run.h5"
    proc = start_cli(_record(path), tmp_path, prepare=_signal_during(*PHASES["saving"], signal.SIGINT))
    proc.wait_for(f"step {STEPS // 10}/{STEPS}")
    proc.signal(signal.SIGINT)
    done = proc.wait()
    assert done.code == 130 and "Traceback" not in done.output, done.output
    stopped = _stopped_step(done.stdout)
    _check_checkpoint(path, _check_interrupted(path, stopped), stopped)
