"""Opening a recording file for reading, safely: only a regular file, whose first bytes were read
(a bounded read) and whose superblock was checked before HDF5 sees it, so that no input can make
the open hang.

Two ways in. A finished file opens in plain read mode, where HDF5 checks the file's length itself.
A file whose SWMR writer is still running, or was killed, is marked "open for writing" in its
superblock, and only SWMR-read mode opens it; that mode skips the length check (made here
instead) and retries a metadata read that fails its checksum, since a live writer may be midway
through a flush. HDF5's default is 100 retries with a backoff growing to a second: a damaged
metadata block then took over 80 s per read (400 s for `info` on a cut file). Here it gets a
bounded number of retries, about a second in all."""
from __future__ import annotations

import ctypes
import os
import stat
import time
from pathlib import Path

import h5py

from lorascope.errors import RecordingError
from lorascope.h5.superblock import SIGNATURE, read_superblock

__all__ = ["open_h5", "damaged"]

# HDF5 keeps a chunk cache per open dataset (8 MiB by default here), and a Recording keeps every
# dataset open: reading all modules once grew the process by ~20 MiB per module (0.9 GiB for 48
# modules, twice the largest module's series). A chunk is one snapshot, read whole and decompressed
# once per read, so the cache would only ever hold chunks that are not read again.
_CHUNK_CACHE_BYTES = 0

# Seconds to wait, one after the other, for a file being written to reach the end its superblock
# names (0.44 s in all). A live writer can write a new end into the superblock before the file has
# grown to it (seen once in a CI run: 147,456 bytes against 158,610); a killed writer's short file
# is then reported as damaged.
_LIVE_PAUSES = (0.0, 0.01, 0.03, 0.1, 0.3)

# Metadata read attempts in SWMR-read mode: the retry sleeps double from 1 µs, so 20 attempts wait
# about a second in all before a damaged block is reported (HDF5's default of 100 waited minutes).
_SWMR_READ_ATTEMPTS = 20

# A version 2/3 superblock with 8-byte addresses (superblock.py): what is read before HDF5 opens
# the file.
_SUPERBLOCK_V2_BYTES = 48


def damaged(path: Path, exc: Exception | str) -> RecordingError:
    return RecordingError(
        f"{path} is a damaged or truncated HDF5 file and cannot be read ({exc}); "
        "record the run again or restore the file from a copy"
    )


def _held_here(path: Path) -> RecordingError:
    """HDF5 opens a file once per process: a second open with other flags is refused."""
    block = read_superblock(path)
    if block is not None and block.open_for_writing:
        return RecordingError(
            f"{path} is being written by a Recorder in this process, and HDF5 will not open it a "
            "second time here; read it live from another process (lorascope.open or `lorascope "
            f"info {path}` in a second shell), or here once the Recorder is closed"
        )
    return RecordingError(
        f"{path} is already open in this process through h5py with other settings; close that "
        "h5py.File first, or read the file with h5py alone"
    )


# HDF5's words when a file this process already holds is opened with other flags
_HELD_HERE = ("file locking flag values don't match", "SWMR read access flag not the same")


def _refused(path: Path, exc: Exception) -> RecordingError:
    if any(words in str(exc) for words in _HELD_HERE):
        return _held_here(path)
    return damaged(path, exc)


def _regular_file(path: Path) -> os.stat_result:
    """The file's status; refuses what is not a regular file before anything opens it (opening a
    FIFO waits for a writer forever)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise RecordingError(f"no recording at {path}; check the path (recordings are .h5 files)") from None
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror or exc}; check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise RecordingError(f"{path} is a folder; give the path of a .h5 recording inside it")
    if not stat.S_ISREG(st.st_mode):
        raise RecordingError(
            f"{path} is not a regular file (a pipe, a socket or a device); give the path of a .h5 recording"
        )
    return st


def _head(path: Path) -> bytes:
    """The first bytes: the signature and, in a lorascope recording, the whole superblock."""
    try:
        with open(path, "rb") as fh:
            return fh.read(_SUPERBLOCK_V2_BYTES)
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror or exc}; check its permissions") from None


def open_h5(path: Path) -> h5py.File:
    """The file open for reading, or a RecordingError that says why not."""
    path = Path(path)
    _regular_file(path)
    head = _head(path)
    if head[:8] != SIGNATURE:
        if len(head) >= 8 and h5py.is_hdf5(path):  # a signature further in (a user block): another tool's file
            raise RecordingError(
                f"{path} is an HDF5 file but not a lorascope recording; give a file written by "
                "`lorascope record` or the Recorder"
            )
        raise RecordingError(
            f"{path} is not an HDF5 file; lorascope recordings are .h5 files written by "
            "`lorascope record` or the Recorder"
        )
    block = read_superblock(path)
    if block is None and head[8:9] in (b"\x02", b"\x03"):
        raise damaged(path, f"its superblock is cut short ({len(head)} bytes)")
    if block is None or not block.open_for_writing:
        try:
            return h5py.File(path, "r", locking=False, rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except (OSError, RuntimeError, ValueError) as exc:
            raise _refused(path, exc) from None
    for pause in _LIVE_PAUSES:
        time.sleep(pause)
        size = path.stat().st_size
        if size >= block.eof:
            break
    else:
        raise damaged(path, f"file is {size} bytes, its superblock says {block.eof}")
    try:
        return _open_swmr(path)
    except (OSError, RuntimeError, ValueError) as exc:
        raise _refused(path, exc) from None


def _open_swmr(path: Path) -> h5py.File:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    fapl.set_cache(0, 521, _CHUNK_CACHE_BYTES, 0.75)  # (unused mdc slots, chunk slots, chunk bytes, w0)
    _set_file_locking(fapl, False)
    _limit_read_attempts(fapl)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl)
    return h5py.File(fid)


def _set_file_locking(fapl, use: bool) -> None:
    # the reader never takes HDF5's file lock: a live writer holds it, and readers on a
    # network file system without locks must still open files
    fapl.set_file_locking(use, ignore_when_disabled=True)


def _limit_read_attempts(fapl) -> None:
    """H5Pset_metadata_read_attempts, which h5py does not expose, called in the HDF5 library
    that h5py loaded; where that library cannot be found the default retries stay."""
    library = _hdf5_library()
    if library is not None:
        library.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(_SWMR_READ_ATTEMPTS))


_LIBRARY: list = []


def _hdf5_library():
    if not _LIBRARY:
        _LIBRARY.append(_find_hdf5_library())
    return _LIBRARY[0]


def _find_hdf5_library():
    """The libhdf5 mapped into this process (h5py's own copy or the system's), by /proc/self/maps."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libhdf5" in line and "_hl" not in line}
    except OSError:
        return None
    for candidate in sorted(paths):
        try:
            library = ctypes.CDLL(candidate)
            library.H5Pset_metadata_read_attempts  # noqa: B018 - the symbol must exist (HDF5 >= 1.10)
            return library
        except (OSError, AttributeError):
            continue
    return None
