"""Making the file of a killed run an ordinary closed HDF5 file.

A SWMR writer marks the file "open for writing" in its superblock and clears the mark when it
closes. Killed (SIGKILL, power loss, a notebook kernel restart), it never does: lorascope's reader
still opens the file (in SWMR-read mode), but ``h5dump``, ``h5ls`` and a plain
``h5py.File(path, "r")`` refuse it ("file is already open for write"). ``repair`` clears the mark,
as ``h5clear -s`` would, and sets the stored status from "running" to "interrupted". Every
committed snapshot stays as it was: the commit protocol flushed each one before pointing at it."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lorascope.errors import RecordingError
from lorascope.h5.validate import plain
from lorascope.h5.writer_process import writer_gone
from lorascope.h5.opening import open_h5
from lorascope.h5.superblock import clear_write_flags, read_superblock

__all__ = ["RepairResult", "repair"]


@dataclass(frozen=True)
class RepairResult:
    path: Path
    cleared: bool  # the write flags were set and are now clear
    status: str  # the stored status after the repair

    def __str__(self) -> str:
        if not self.cleared:
            return f"{self.path} was closed properly (status {self.status}); nothing to repair"
        return (f"{self.path}: cleared the flags of its killed writer (status now {self.status}); "
                "h5dump, h5ls and plain h5py open it now")


def _writer(path: Path) -> dict:
    f = open_h5(path)  # SWMR-read mode for a flagged file, with bounded retries
    try:
        return {k: plain(f.attrs[k]) for k in ("writer_pid", "writer_host", "status") if k in f.attrs}
    except (OSError, RuntimeError, KeyError) as exc:
        raise RecordingError(
            f"{path} cannot be read even in SWMR mode ({exc}); it is damaged beyond what repair "
            "fixes: record the run again or restore the file from a copy"
        ) from None
    finally:
        f.close()


def repair(path: str | Path, *, force: bool = False) -> RepairResult:
    """Clears the 'open for writing' flags a killed writer left in ``path``. Refuses while the
    writing process is alive on this machine; a file written on another machine needs
    ``force=True`` (its writer cannot be checked from here)."""
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"no recording at {path}; check the path (recordings are .h5 files)")
    if not h5py.is_hdf5(path):
        raise RecordingError(f"{path} is not an HDF5 file; give a recording written by lorascope")
    block = read_superblock(path)
    if block is None:
        raise RecordingError(
            f"{path} does not start with an HDF5 1.8+ superblock, so lorascope cannot repair it; "
            f"use `h5clear -s {path}` from HDF5's tools"
        )
    attrs = _writer(path)
    status = str(attrs.get("status", ""))
    if not block.open_for_writing:
        return RepairResult(path, False, status)
    pid, host = attrs.get("writer_pid"), attrs.get("writer_host")
    if writer_gone(pid, host) is False:
        raise RecordingError(
            f"{path} is still being written by process {pid}; let it finish (or stop it) and "
            "repair only a file whose writer is gone"
        )
    if host is not None and host != socket.gethostname() and not force:
        raise RecordingError(
            f"{path} was written on {host}, where lorascope cannot check whether its writer is "
            f"still running; repair it there, or pass --force once you know the run stopped"
        )
    if path.stat().st_size < block.eof:
        raise RecordingError(
            f"{path} is shorter than its superblock says ({path.stat().st_size} of {block.eof} "
            "bytes): it was truncated, and clearing its flags would not make it whole; record the "
            "run again or restore the file from a copy"
        )
    clear_write_flags(path)
    if status == "running":
        with h5py.File(path, "r+", locking=False) as f:
            f.attrs.modify("status", np.bytes_(b"interrupted"))
        status = "interrupted"
    return RepairResult(path, True, status)
