"""Whether the process that wrote a recording is still alive: what turns a file still marked
"running" into "interrupted" for its readers, and what makes ``repair`` refuse a live file."""
from __future__ import annotations

import os
import socket

__all__ = ["writer_gone", "effective_status"]


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    try:  # a killed child that its parent has not reaped yet is a zombie: gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def writer_gone(pid: int | None, host: str | None) -> bool | None:
    """True or False when the writer ran on this machine (and its pid is known); None when it
    cannot be decided from here."""
    if pid is None or host != socket.gethostname():
        return None
    return _pid_gone(int(pid))


def effective_status(stored: str, attrs: dict) -> str:
    """A file still marked "running" whose writer process is gone was interrupted (SIGKILL,
    power loss). Only decidable on the machine that wrote it; elsewhere it stays "running"."""
    if stored == "running" and writer_gone(attrs.get("writer_pid"), attrs.get("writer_host")):
        return "interrupted"
    return stored
