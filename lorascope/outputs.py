"""Which files a command owns, and that nothing else is written or removed.

A run writes a recording and, beside it, files named from the recording's *full* name (adapters,
resumable state, and the temporary names they pass through). Nothing is ever found by a pattern:
``owned_files(output)`` lists the exact paths, and cleaning up an interrupted run removes those and
nothing else (a glob such as ``run-a16.*`` also matched ``run-a16.5.h5``, another run's recording).

Two processes must not write the same output: ``OutputLock`` takes an exclusive lock for the life
of a run, and the second process is refused with a sentence. And no command may write over one of
its own inputs (``lorascope analyze run.csv -o run.csv``): ``OutputGuard`` is asked before every
file a command writes."""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from lorascope.errors import UsageError

__all__ = ["SideFiles", "side_files", "owned_files", "remove_owned", "OutputLock", "OutputGuard"]

RECORDING_SUFFIX = ".h5"


@dataclass(frozen=True)
class SideFiles:
    """The files a run at ``recording`` writes, by name."""

    recording: Path
    adapters: Path  # the trained adapters (safetensors)
    state: Path  # what --resume needs: optimizer, scheduler, scaler, RNG, loop counters
    lock: Path  # held while a process writes any of them

    @property
    def temporaries(self) -> tuple[Path, ...]:
        """The names files pass through on their way to the ones above (atomic renames)."""
        return (
            self.recording.with_name(self.recording.name + ".creating"),
            self.recording.with_name(self.recording.name + ".resume-tmp"),
            self.adapters.with_name(self.adapters.name + ".tmp"),
            self.state.with_name(self.state.name + ".tmp"),
        )


def side_files(recording: str | Path) -> SideFiles:
    """Names derived from the recording's full name: only its own ``.h5`` suffix is dropped, so
    ``exp.2024.12.05`` and ``exp.2024.12.06`` never share ``exp.2024.12.adapters.safetensors``
    (dropping any suffix made them do so)."""
    recording = Path(recording)
    name = recording.name
    stem = name[: -len(RECORDING_SUFFIX)] if name.endswith(RECORDING_SUFFIX) and name != RECORDING_SUFFIX else name
    base = recording.with_name(stem)
    return SideFiles(
        recording=recording,
        adapters=base.with_name(stem + ".adapters.safetensors"),
        state=base.with_name(stem + ".state.pt"),
        lock=base.with_name("." + stem + ".lock"),
    )


def owned_files(recording: str | Path) -> list[Path]:
    """Every path a run at ``recording`` may create, lock file aside: the only ones it removes."""
    side = side_files(recording)
    return [side.recording, side.adapters, side.state, *side.temporaries]


def remove_owned(recording: str | Path) -> list[Path]:
    """Removes what an earlier run at ``recording`` left (before it is redone from the start);
    returns what was removed. Never a pattern: only the exact names of ``owned_files``."""
    removed = []
    for path in owned_files(recording):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


class OutputLock:
    """An exclusive lock on a run's output for as long as the run writes it (``with OutputLock(
    recording):``). A second process asking for the same output is refused at once with a
    sentence that names the holder; the lock goes with the process, so a killed run never
    leaves a stale lock behind (the lock file itself is removed on release)."""

    def __init__(self, recording: str | Path) -> None:
        self.path = side_files(recording).lock
        self.recording = Path(recording)
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
                os.close(fd)
                raise UsageError(
                    f"{self.recording} is being written by {_holder(holder)}; wait for that run to "
                    "finish, or choose another output path with -o"
                ) from None
            # the holder before us may have removed the file between our open and our lock: a
            # lock on a file no longer at the path protects nothing, so take it again
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: nobody can hold a lock on it meanwhile
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing drops the lock
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(text: str) -> str:
    return f"process {text}" if text.isdigit() else text


class OutputGuard:
    """Refuses to write a file that is one of the command's inputs (the same file by any name:
    a symlink, a hard link, a relative path). Ask ``guard.check(path)`` before writing ``path``."""

    def __init__(self, inputs: Iterable[str | Path]) -> None:
        self._inputs: list[tuple[Path, os.stat_result]] = []
        for path in inputs:
            try:
                self._inputs.append((Path(path), os.stat(path)))
            except OSError:
                pass  # an input that does not exist cannot be overwritten

    def check(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            target = os.stat(path)
        except OSError:
            return path  # nothing there yet: writing it overwrites nothing
        for source, stat in self._inputs:
            if os.path.samestat(stat, target):
                raise UsageError(
                    f"{path} is the input {source}: writing there would destroy it; choose another "
                    "output path"
                )
        return path
