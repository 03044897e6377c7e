"""Ownership of output files: names derived from the full output name, cleanup by exact names,
one writer per output, and no command writing over its own input."""
from __future__ import annotations

import os
import signal

import pytest

from lorascope.errors import UsageError
from lorascope.outputs import OutputGuard, OutputLock, owned_files, remove_owned, side_files


def test_side_files_come_from_the_full_output_name():
    a, b = side_files("out/exp.2024.12.05"), side_files("out/exp.2024.12.06")
    assert a.adapters.name == "exp.2024.12.05.adapters.safetensors"
    assert a.state.name == "exp.2024.12.05.state.pt"
    assert {a.adapters, a.state, a.lock}.isdisjoint({b.adapters, b.state, b.lock})
    run = side_files("out/run.h5")  # a recording's own suffix is the one dropped
    assert (run.adapters.name, run.state.name) == ("run.adapters.safetensors", "run.state.pt")


def test_cleanup_removes_exactly_the_runs_own_files(tmp_path):
    mine, other = tmp_path / "sweep-a16.h5", tmp_path / "sweep-a16.5.h5"
    for recording in (mine, other):
        for path in owned_files(recording):
            path.write_text("x")
    stranger = tmp_path / "sweep-a16.notes.txt"
    stranger.write_text("keep me")
    removed = remove_owned(mine)
    assert set(removed) == set(owned_files(mine))
    assert all(p.exists() for p in owned_files(other)) and stranger.exists()


def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    output = tmp_path / "race.h5"
    with OutputLock(output):
        with pytest.raises(UsageError, match=f"race.h5 is being written by process {os.getpid()}"):
            OutputLock(output).acquire()
        # the same side files under another spelling of the output are the same lock
        with pytest.raises(UsageError, match="being written"):
            OutputLock(tmp_path / "race").acquire()
    with OutputLock(output):  # released: free again
        pass
    assert not side_files(output).lock.exists()


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    output = tmp_path / "killed.h5"
    pid = os.fork()
    if pid == 0:
        OutputLock(output).acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert side_files(output).lock.exists()  # the file stays, its lock went with the process
    with OutputLock(output):
        pass


def test_no_command_writes_over_its_own_input(tmp_path):
    recording = tmp_path / "run.csv"  # a recording named like a table
    recording.write_bytes(b"\x89HDF")
    alias = tmp_path / "alias.csv"
    alias.symlink_to(recording)
    guard = OutputGuard([recording])
    for target in (recording, alias, tmp_path / "." / "run.csv"):
        with pytest.raises(UsageError, match="is the input"):
            guard.check(target)
    assert guard.check(tmp_path / "fresh.csv") == tmp_path / "fresh.csv"
