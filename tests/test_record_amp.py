"""A recorded fp16 run end to end, on CPU and CUDA (the CUDA cases are marked `gpu`): the training
loop with a GradScaler and an injected overflow, the Recorder storing A, B and every micro-step's
gradient. The file must show the skipped step and the lowered scale, A and B unchanged across it,
and gradients divided by the scale: the true gradients, checked against plain float32 autograd
on the same weights and batches. `info` and `analyze` then call the skip expected fp16
behaviour, not a failure."""
from __future__ import annotations

import copy
import math

import h5py
import numpy as np
import pytest
import torch

import lorascope
from lorascope.analysis import health_findings
from lorascope.analysis import describe
from lorascope.config import RecordConfig
from lorascope.record import Recorder
from lorascope.train.amp import resolve_precision
from lorascope.train.loop import train_loop
from tests.amp_helpers import DEVICES, OverflowAt, lm_batches, lora_model, reference_grads

STEPS, ACCUM = 4, 2
OVERFLOW_CALL = 5  # the first micro-batch of step 3
SKIPPED_STEP = 3
S = 2.0 ** 16  # GradScaler's initial scale
# fp16 keeps 11 significant bits; through two blocks of fp16 matmuls the gradients of A and B
# agree with float32's to about 1e-3 of their norm (measured on CPU: 1.0e-3 to 1.6e-3)
FP16_RTOL = 1e-2


def record(path, device: str, mode: str, overflow=frozenset()):
    """Trains tiny-gpt2 for STEPS steps of ACCUM micro-batches, recording every step with
    gradients; returns the untouched float32 copy of the model it started from."""
    device = torch.device(device)
    model = lora_model(device)
    start = copy.deepcopy(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with Recorder(path, model, RecordConfig(every=1, grads=True), total_steps=STEPS) as rec:
        rec.start(optimizer)
        train_loop(model=OverflowAt(model, set(overflow)), optimizer=optimizer, scheduler=None,
                   train_data=lm_batches(STEPS * ACCUM), device=device,
                   precision=resolve_precision(mode, device), total_steps=STEPS, grad_accum=ACCUM,
                   max_grad_norm=1.0, hooks=rec)
    return start


@pytest.fixture(scope="module", params=DEVICES)
def overflowed(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("amp") / f"fp16-{request.param}.h5"
    start = record(path, request.param, "fp16", overflow={OVERFLOW_CALL})
    return path, start


def test_the_skipped_step_and_the_lowered_scale_are_recorded(overflowed):
    path, _ = overflowed
    with lorascope.open(path) as rec:
        s = rec.scalars
        assert s["step"].tolist() == [1, 2, 3, 4]
        assert s["skipped"].tolist() == [0.0, 0.0, 1.0, 0.0]
        assert s["loss_scale"].tolist() == [S, S, S / 2, S / 2]
        assert rec.status == "complete" and rec.steps.tolist() == [0, 1, 2, 3, 4]
    with h5py.File(path, "r") as f:  # each micro-step's gradient was divided by the scale of its backward
        assert f["grad_snapshots/loss_scale"][:].tolist() == [S] * 4 + [S] * 2 + [S / 2] * 2


def test_a_and_b_are_bit_identical_across_the_skipped_step(overflowed):
    path, _ = overflowed
    with lorascope.open(path) as rec:
        t = rec.index_of(SKIPPED_STEP)
        for m in rec.modules.values():
            A, B = m.A[:], m.B[:]
            np.testing.assert_array_equal(A[t], A[t - 1])
            np.testing.assert_array_equal(B[t], B[t - 1])
            assert not np.array_equal(A[t + 1], A[t])  # the next step trained again
            assert np.isfinite(A).all() and np.isfinite(B).all()
        norms = rec.modules[next(iter(rec.modules))].updates
        assert norms.loc[norms["step"] == SKIPPED_STEP, ["dA_norm", "dB_norm"]].to_numpy().tolist() == [[0.0, 0.0]]


def test_recorded_gradients_are_the_true_gradients(overflowed):
    """The first step's two micro-batches ran on the starting weights: each recorded gradient
    (the scaled .grad's growth over that micro-step, divided by 65536) equals float32 autograd's
    gradient of that micro-batch's loss / ACCUM, to fp16 precision."""
    path, start = overflowed
    batches = lm_batches(STEPS * ACCUM)
    with lorascope.open(path) as rec:
        assert rec.grad_micro_steps.tolist() == list(range(1, STEPS * ACCUM + 1))
        for micro in (0, 1):
            expected = reference_grads(start, batches[micro], divide=ACCUM)
            for name, m in rec.modules.items():
                for matrix, got in (("A", m.grad_A[micro]), ("B", m.grad_B[micro])):
                    want = expected[f"{name}.{matrix}"].numpy()
                    error = np.linalg.norm(got - want) / np.linalg.norm(want)
                    assert error < FP16_RTOL, (name, matrix, micro, error)
        # the overflowing micro-batch's gradient is recorded as it was: not finite
        overflowed_grads = [m.grad_A[OVERFLOW_CALL - 1] for m in rec.modules.values()]
        assert not all(np.isfinite(g).all() for g in overflowed_grads)


def test_info_and_analyze_call_the_skip_expected(overflowed):
    path, _ = overflowed
    with lorascope.open(path) as rec:
        health = describe(rec, path).split("\nhealth\n", 1)[1]
        findings = [f for f in health_findings([rec]) if f.module is None]
    assert "error" not in health and "warning" not in health, health
    assert "note" in health and "fp16" in health and "expected" in health, health
    assert [(f.severity, f.step) for f in findings] == [("note", SKIPPED_STEP)]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_recording_end_to_end(tmp_path, device):
    path = tmp_path / "bf16.h5"
    record(path, device, "bf16")
    with lorascope.open(path) as rec:
        s = rec.scalars
        assert (s["skipped"] == 0).all() and (s["loss_scale"] == 1).all()
        assert all(math.isfinite(v) for v in s["loss"])
        m = rec.modules[next(iter(rec.modules))]
        assert m.A.shape[0] == STEPS + 1 and not np.array_equal(m.A[-1], m.A[0])
        assert np.isfinite(m.grad_A[:]).all()


def test_record_cli_runs_fp16_on_cpu_and_resumes_its_scaler(tmp_path):
    """`lorascope record --amp fp16` on CPU: the whole run (session, loop, Recorder, checkpoint)
    with a GradScaler, and --resume continues with the scaler's saved scale, not a fresh one."""
    from typer.testing import CliRunner

    from lorascope.cli import app
    from lorascope.runs.session import checkpoint_paths
    from tests.cli_process import QUICK_RECORD

    path = tmp_path / "fp16.h5"
    args = ["record", "-o", str(path), *QUICK_RECORD, "--device", "cpu", "--amp", "fp16"]
    first = CliRunner().invoke(app, [*args, "--steps", "2"])
    assert first.exit_code == 0, first.output
    # as if the scaler had met overflows before the checkpoint: its scale is what resuming must keep
    state_path = checkpoint_paths(path)[1]
    state = torch.load(state_path, weights_only=True)
    assert state["scaler"]["scale"] == S
    state["scaler"]["scale"] = 1024.0
    torch.save(state, state_path)
    resumed = CliRunner().invoke(app, [*args, "--steps", "4", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    with lorascope.open(path) as rec:
        assert rec.status == "complete" and rec.environment["amp"] == "fp16"
        s = rec.scalars
        assert s["step"].tolist() == [1, 2, 3, 4] and (s["skipped"] == 0).all()
        assert s["loss_scale"].tolist() == [S, S, 1024.0, 1024.0]


def test_amp_help_says_what_auto_picks():
    from typer.testing import CliRunner

    from lorascope.cli import app

    result = CliRunner().invoke(app, ["record", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert "fp16 (autocast + GradScaler)" in result.output and "off (fp32) on CPU" in result.output
