"""lorascope: record, analyse and compare what LoRA's A and B matrices do while they train."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "open", "open_many"]


def open(path, **kwargs):  # noqa: A001 - mirrors h5py.File / builtins.open on purpose
    """Opens a recording for reading: ``with lorascope.open("recordings/run.h5") as rec: ...``."""
    from lorascope.h5.reader import open_recording

    return open_recording(path, **kwargs)


def open_many(paths, **kwargs):
    """Opens several recordings together, for comparison; returns a list of Recording."""
    from lorascope.h5.reader import open_many as _open_many

    return _open_many(paths, **kwargs)
