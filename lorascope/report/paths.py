"""File names for a report. Run and module names come from recordings, which are data a stranger
may have written: they become file names only through `safe_name`, and every path is checked to lie
inside the output folder, so a run named `../../x` cannot write anywhere else."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from lorascope.errors import UsageError

__all__ = ["safe_name", "default_report_name", "inside"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_DOTS = re.compile(r"\.{2,}")
_MAX_NAME = 80


def safe_name(text: str, fallback: str = "run") -> str:
    """A file-name component made only of letters, digits, `_`, `-` and single dots, never
    starting with a dot or a dash (no hidden files, no `..`, no option look-alikes)."""
    name = _DOTS.sub(".", _UNSAFE.sub("-", str(text))).strip(".-")
    return name[:_MAX_NAME].rstrip(".-") or fallback


def default_report_name(run_names: Sequence[str]) -> str:
    """`reports/<this>` when no output folder is given: the run's name, or the first runs'."""
    names = [safe_name(n) for n in run_names]
    if len(names) == 1:
        return names[0]
    if len(names) <= 3 and sum(len(n) for n in names) <= 60:
        return "_vs_".join(names)
    return safe_name(f"{names[0]}-and-{len(names) - 1}-more")


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refusing anything that would resolve outside `folder`."""
    root = folder.resolve()
    resolved = (root / name).resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise UsageError(
            f"the report file name {name!r} would leave the output folder {folder}; "
            "this is a bug in lorascope, please report it with the recording's run name"
        )
    return folder / name
