"""Recordings are files any HDF5 ≥ 1.10 tool reads: Debian's hdf5-tools (HDF5 1.10) dump a complete
recording, and a killed one after `lorascope.h5.repair` (what `h5clear -s` does) clears the flags
its writer left. scripts/test.sh installs hdf5-tools where apt is available."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time

import h5py
import numpy as np
import pytest

import lorascope
from lorascope.config import RecordConfig
from lorascope.errors import RecordingError
from lorascope.h5.repair import repair
from lorascope.h5.superblock import lookup3, read_superblock
from tests.record_helpers import tiny_lora_gpt2, train
from tests.test_record_kill import Worker, _check_every_snapshot

needs_tools = pytest.mark.skipif(
    shutil.which("h5dump") is None or shutil.which("h5ls") is None,
    reason="HDF5's command-line tools are not installed (apt-get install hdf5-tools)",
)


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def _readable_by_tools(path) -> None:
    dump = _tool("h5dump", "-H", str(path))
    assert dump.returncode == 0 and "error" not in (dump.stdout + dump.stderr).lower(), dump.stderr
    listing = _tool("h5ls", "-r", str(path))
    assert listing.returncode == 0 and "*ERROR*" not in listing.stdout, listing.stdout
    assert "/scalars/other" in listing.stdout and "/modules" in listing.stdout


@pytest.fixture
def complete(tmp_path):
    import torch

    from lorascope.record import Recorder

    model = tiny_lora_gpt2()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    path = tmp_path / "complete.h5"
    with Recorder(path, model, RecordConfig(every=1, base_weights=True)) as rec:
        rec.start(optimizer)
        train(model, optimizer, rec, steps=2)
        rec.log_eval(2, {"loss": 1.5})  # a row of the compound /scalars/other
    return path


@needs_tools
def test_hdf5_1_10_tools_read_every_object_of_a_recording(complete):
    _readable_by_tools(complete)
    assert "eval_loss" in _tool("h5dump", "-d", "/scalars/other", str(complete)).stdout
    with h5py.File(complete, "r") as f:  # and plain h5py, without SWMR
        assert f["scalars/other"].attrs["rows"] == 1


def test_lookup3_known_answers():
    # Bob Jenkins' lookup3.c self-test values for hashlittle
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


def _killed(tmp_path):
    path = tmp_path / "killed.h5"
    worker = Worker(path)
    time.sleep(0.3)
    worker.signal(signal.SIGKILL)
    return path


def test_a_killed_recording_is_repaired_for_every_reader(tmp_path):
    path = _killed(tmp_path)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    with lorascope.open(path) as rec:  # lorascope's own reader opens it as it is
        assert rec.needs_repair and "lorascope.h5.repair.repair(" in rec.repair_hint
        steps = rec.steps.tolist()
    result = repair(path)
    assert result.cleared and result.status == "interrupted"
    assert not read_superblock(path).open_for_writing
    with h5py.File(path, "r") as f:  # plain h5py, no SWMR
        assert f.attrs["status"].rstrip(b"\0") == b"interrupted"
    with _check_every_snapshot(path) as rec:  # every committed snapshot, bit for bit
        assert rec.steps.tolist() == steps and not rec.needs_repair and rec.repair_hint == ""
    assert not repair(path).cleared  # once is enough


@needs_tools
def test_hdf5_tools_read_a_killed_recording_after_repair(tmp_path):
    path = _killed(tmp_path)
    assert _tool("h5dump", "-H", str(path)).returncode != 0
    repair(path)
    _readable_by_tools(path)


@pytest.mark.skipif(shutil.which("h5clear") is None, reason="h5clear (hdf5-tools) is not installed")
def test_repair_writes_the_superblock_h5clear_writes(tmp_path):
    path = _killed(tmp_path)
    theirs = tmp_path / "theirs.h5"
    shutil.copy(path, theirs)
    assert _tool("h5clear", "-s", str(theirs)).returncode == 0
    repair(path)
    with open(path, "rb") as ours, open(theirs, "rb") as reference:
        assert ours.read(48) == reference.read(48)


def test_repair_refuses_a_live_writer_and_a_foreign_one(tmp_path, monkeypatch):
    path = tmp_path / "live.h5"
    worker = Worker(path)
    try:
        with pytest.raises(RecordingError, match="still being written by process"):
            repair(path)
    finally:
        worker.signal(signal.SIGKILL)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-machine")
    with pytest.raises(RecordingError, match="--force"):
        repair(path)
    assert repair(path, force=True).cleared


def test_a_complete_recording_needs_no_repair(complete):
    assert not read_superblock(complete).open_for_writing
    result = repair(complete)
    assert not result.cleared and "nothing to repair" in str(result)
    with lorascope.open(complete) as rec:
        assert not rec.needs_repair


def test_opening_a_file_this_process_is_writing_says_so(tmp_path):
    import torch

    from lorascope.record import Recorder

    model = tiny_lora_gpt2()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    path = tmp_path / "live.h5"
    with Recorder(path, model, RecordConfig(every=1)) as rec:
        rec.start(optimizer)
        rec.flush(wait=True)
        with pytest.raises(RecordingError, match="being written by a Recorder in this process") as caught:
            lorascope.open(path)
        assert "another process" in str(caught.value) and "damaged" not in str(caught.value)
    with lorascope.open(path) as done:
        assert done.status == "complete" and np.array_equal(done.steps, [0])


def test_the_repair_command_and_info_say_what_fixes_a_killed_recording(tmp_path):
    """info names the command; the command clears the flags; a second run says nothing is left."""
    from typer.testing import CliRunner

    from lorascope.cli import app

    path = _killed(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["info", str(path), "--no-health"])
    assert shown.exit_code == 0, shown.output
    assert f"lorascope repair {path}" in " ".join(shown.output.split())
    fixed = runner.invoke(app, ["repair", str(path)])
    assert fixed.exit_code == 0 and "cleared the flags" in fixed.output, fixed.output
    with h5py.File(path, "r") as f:  # plain h5py, no SWMR
        assert f.attrs["status"].rstrip(b"\0") == b"interrupted"
    again = runner.invoke(app, ["repair", str(path)])
    assert again.exit_code == 0 and "nothing to repair" in again.output
    assert "repair " not in runner.invoke(app, ["info", str(path), "--no-health"]).output


def test_the_repair_command_refuses_a_live_writer_in_a_sentence(tmp_path):
    from typer.testing import CliRunner

    from lorascope.cli import app

    path = tmp_path / "live.h5"
    worker = Worker(path)
    try:
        result = CliRunner().invoke(app, ["repair", str(path)])
    finally:
        worker.signal(signal.SIGKILL)
    assert result.exit_code == 2 and "still being written by process" in result.output
    assert "Traceback" not in result.output
