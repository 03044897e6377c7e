"""The recording format's names and encodings, shared by the writer and the reader. Imports
neither torch nor lorascope's training code, so a reader needs only numpy and h5py.

The exact layout is specified in ``docs/format.md``; change both together and bump
``FORMAT_VERSION`` when an existing reader would misread a new file."""
from __future__ import annotations

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "DORA_FORMAT_VERSION",
    "format_version",
    "LIBVER",
    "STATUSES",
    "STANDARD_SCALARS",
    "UPDATE_COLUMNS",
    "BF16_ENCODING",
    "STORAGE_DTYPES",
    "decode",
    "numpy_storage_dtype",
]

# The newest version this code reads. A file is written as the oldest version whose readers read
# it right: v2 only when it holds a DoRA module (a v1 reader would take scaling·B·A for its ΔW).
FORMAT_VERSION = 2
DORA_FORMAT_VERSION = 2


def format_version(dora: bool) -> int:
    """The version a new file gets."""
    return DORA_FORMAT_VERSION if dora else 1


# HDF5 library version bounds for writing: SWMR needs the 1.10 file format (its superblock), and
# capping it there keeps every object readable by HDF5 1.10 tools. "latest" under HDF5 2.0 wrote
# a compound datatype message that HDF5 1.10 and 1.14 cannot decode.
LIBVER = ("v110", "v110")

# "running" on disk after a crash: the reader turns it into "interrupted" when it can tell that
# the writing process is gone (see reader.py).
STATUSES = ("running", "complete", "interrupted", "failed")
STATUS_BYTES = 16  # fixed length, so that the status can be rewritten in place under SWMR

# One column per name, one row per optimizer step (NaN where a step did not report it). Names
# outside this list go to the long table /scalars/other, because SWMR forbids creating datasets
# once the file is live and eval metrics or a trainer's extra log keys are not known in advance.
STANDARD_SCALARS = ("loss", "lr", "grad_norm", "clipped", "loss_scale", "skipped", "tokens")
OTHER_NAME_BYTES = 64

# Columns of /updates/norms (U, modules, 4): Frobenius norms of the step's update and of the
# weight after it.
UPDATE_COLUMNS = ("dA", "dB", "A", "B")

# numpy has no bfloat16: its bits are stored as uint16 (the high half of a float32) and the
# dataset carries the attribute encoding=BF16_ENCODING.
BF16_ENCODING = "bfloat16-as-uint16"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")


def numpy_storage_dtype(name: str) -> np.dtype:
    """The numpy dtype an HDF5 dataset gets for a storage dtype name."""
    return np.dtype({"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}[name])


def decode(array: np.ndarray, encoding: str) -> np.ndarray:
    """Raw dataset values → float32 (bfloat16 bits) or the stored float type unchanged."""
    if encoding == BF16_ENCODING:
        return (np.asarray(array, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(array)
