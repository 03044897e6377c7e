"""A full disk and an unwritable output path, met by a real `lorascope record` process.

A full disk is simulated per process with RLIMIT_FSIZE (SIGXFSZ ignored, so a write past the
limit fails with EFBIG as it would with ENOSPC): no privileges, no loop device, and the small
checkpoint files still fit, which is what a disk that filled up during a run leaves room for
only sometimes. Where the space is known to be missing beforehand, the run must refuse before
training starts."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import lorascope
from lorascope.outputs import side_files
from tests.cli_process import LAUNCH, QUICK_RECORD, run_cli, warm  # noqa: F401 - fixture

STEPS = 60
LIMIT = 600_000  # bytes: room for the file's layout and about 15 snapshots of tiny-gpt2 (32 KiB each)


def _one_line_error(done, *words: str) -> str:
    assert done.code == 2, done.output
    assert "Traceback" not in done.output and "Exception ignored" not in done.output, done.stderr
    errors = done.error_lines()
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("launcher", LAUNCH)
@pytest.mark.parametrize("flush_every", [1, 10])
def test_disk_full_mid_run_stops_cleanly_and_keeps_the_file(tmp_path, warm, launcher, flush_every):
    path = tmp_path / "run.h5"
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", STEPS,
                    "--set", f"record.flush_every_steps={flush_every}"], tmp_path, launcher, file_size=LIMIT)
    _one_line_error(done, "error: writing the recording", "no room for the next")
    assert "step 1/" not in done.stdout  # no "finished" summary after a failure
    with lorascope.open(path) as rec:  # every committed snapshot is readable
        assert rec.status in ("failed", "interrupted")
        steps = rec.steps.tolist()
        assert steps == list(range(len(steps))) and len(steps) >= 5
        for m in rec.modules.values():
            assert np.isfinite(m.A[:]).all() and np.isfinite(m.B[:]).all()
        assert rec.scalars["step"].tolist() == list(range(1, len(rec.scalars) + 1))
    # the trained adapters were saved although the recording could not be finished
    side = side_files(path)
    adapters, state = side.adapters, side.state
    assert adapters.stat().st_size > 0 and not state.exists()


def _no_space_after(snapshots: int):
    """Fault injection at the writer's I/O boundary: the snapshot after ``snapshots`` fails with
    ENOSPC before any byte of it is written (HDF5 itself is left consistent, unlike a real
    failed write: see the test above)."""

    def prepare() -> None:
        import errno

        from lorascope.h5.file import RecordingFile

        write = RecordingFile.write_snapshot

        def failing(self, *args):
            if self.written["snapshots"] >= snapshots:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            write(self, *args)

        RecordingFile.write_snapshot = failing

    return prepare


def test_write_error_mid_run_keeps_the_committed_snapshots_and_the_checkpoint(tmp_path, warm):
    path = tmp_path / "run.h5"
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", STEPS, "--set", "record.flush_every_steps=1"],
                   tmp_path, prepare=_no_space_after(8))
    _one_line_error(done, "error: writing the recording", "No space left on device")
    with lorascope.open(path) as rec:
        assert rec.stored_status == "failed"
        assert rec.steps.tolist() == list(range(8))  # every snapshot written before the failure
        assert np.isfinite(rec.modules[next(iter(rec.modules))].A[:]).all()
    # the trained adapters are kept; the state --resume needs is not, because the recording may
    # end before the adapters' step and resuming would leave a hole in it
    side = side_files(path)
    adapters, state = side.adapters, side.state
    assert adapters.stat().st_size > 0 and not state.exists() and not list(tmp_path.glob("*.tmp"))
    resumed = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", STEPS, "--resume"], tmp_path)
    _one_line_error(resumed, "cannot resume", "start a new run")


def test_a_failed_resume_removes_the_older_state_that_no_longer_matches(tmp_path, warm):
    path = tmp_path / "run.h5"
    assert run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", 2], tmp_path).code == 0
    side = side_files(path)
    adapters, state = side.adapters, side.state
    assert state.exists()
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", STEPS, "--resume",
                    "--set", "record.flush_every_steps=1"], tmp_path, prepare=_no_space_after(6))
    _one_line_error(done, "No space left on device")
    # the adapters moved on past step 2: a step-2 state beside them would resume from the wrong weights
    assert adapters.exists() and not state.exists()


def _little_free_space() -> None:
    """The child's view of the disk: 1 MiB free, less than a 60-step recording needs."""
    Usage = namedtuple("Usage", "total used free")
    shutil.disk_usage = lambda path: Usage(2**30, 2**30 - 2**20, 2**20)


def test_too_little_free_space_is_refused_before_training(tmp_path, warm):
    path = tmp_path / "run.h5"
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", STEPS], tmp_path,
                   prepare=_little_free_space)
    _one_line_error(done, "MiB free", "--record-every")
    assert "step 1/" not in done.stderr  # refused before the first step
    assert not path.exists()


def test_enough_free_space_is_not_refused(tmp_path, warm):
    path = tmp_path / "run.h5"
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", 2], tmp_path, prepare=_little_free_space)
    assert done.code == 0, done.output


def _lock(folder: Path) -> None:
    """Makes an existing folder one no one may create files in. Root ignores permission bits,
    so as root the folder is made immutable (chattr +i: ext4 and most local filesystems)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root on a filesystem without chattr +i: no folder is read-only to root here")


def _unlock(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    else:
        folder.chmod(0o755)


@pytest.mark.parametrize("launcher", LAUNCH)
def test_output_under_a_regular_file_is_refused_before_training(tmp_path, warm, launcher):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where a folder would have to be")
    done = run_cli(["record", "-o", blocker / "run.h5", *QUICK_RECORD, "--steps", 2], tmp_path, launcher)
    _one_line_error(done, "cannot create the output folder", "-o")
    assert "loading model" not in done.stderr  # before anything expensive


def test_output_in_a_read_only_folder_is_refused_before_training(tmp_path, warm):
    folder = tmp_path / "locked"
    folder.mkdir()
    _lock(folder)
    try:
        done = run_cli(["record", "-o", folder / "run.h5", *QUICK_RECORD, "--steps", 2], tmp_path)
        _one_line_error(done, "cannot write into", "-o")
        assert "loading model" not in done.stderr
        assert not list(folder.iterdir())
    finally:
        _unlock(folder)


def test_resume_into_a_read_only_folder_is_refused(tmp_path, warm):
    folder = tmp_path / "runs"
    path = folder / "run.h5"
    assert run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", 2], tmp_path).code == 0
    before = path.read_bytes()
    _lock(folder)
    try:
        done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", 4, "--resume"], tmp_path)
        _one_line_error(done, "cannot write into")
        assert path.read_bytes() == before  # the recording is untouched
    finally:
        _unlock(folder)



def _disk_full_from(module: str, function: str):
    """The disk is full while ``module.function`` (a checkpoint's save) runs: every write past a
    few bytes fails in the real writer, as on a full disk. (The limit is lifted afterwards: the
    test's stderr is a file too, and the error line must reach it.)"""

    def prepare() -> None:
        import importlib
        import resource

        owner = importlib.import_module(module)
        original = getattr(owner, function)

        def full(*args, **kwargs):
            limits = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64, limits[1]))
            try:
                return original(*args, **kwargs)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, limits)

        setattr(owner, function, full)

    return prepare


@pytest.mark.parametrize("writer, what", [("lorascope.runs.session._save_adapters", "adapters"),
                                          ("lorascope.runs.session._save_state", "resume state")], ids=["adapters", "state"])
def test_a_full_disk_while_saving_the_checkpoint_is_a_sentence(tmp_path, warm, writer, what):
    path = tmp_path / "run.h5"
    module, function = writer.rsplit(".", 1)
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", 3], tmp_path, prepare=_disk_full_from(module, function))
    line = _one_line_error(done, f"saving the {what}", "File too large", "MiB free", "-o")
    assert "SafetensorError" not in line and "inline_container" not in line
    with lorascope.open(path) as rec:  # the recording was closed before the save began
        assert rec.status == "complete" and rec.steps.tolist() == [0, 1, 2, 3]
    side = side_files(path)
    assert not side.state.exists()  # no state without the adapters it belongs to, nor after them
    assert side.adapters.exists() == (what == "resume state")
    assert not list(tmp_path.glob("*.tmp"))
