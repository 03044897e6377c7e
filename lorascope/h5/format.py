"""The recording format's names and encodings, shared by the writer and the reader. Imports
neither torch nor lorascope's training code, so a reader needs only numpy and h5py.

The exact layout is specified in ``docs/format.md``; change both together and bump
``FORMAT_VERSION`` when an existing reader would misread a new file."""
from __future__ import annotations

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "STATUSES",
    "STANDARD_SCALARS",
    "UPDATE_COLUMNS",
    "BF16_ENCODING",
    "STORAGE_DTYPES",
    "decode",
    "numpy_storage_dtype",
]

FORMAT_VERSION = 1

# "running" on disk after a crash: the reader turns it into "interrupted" when it can tell that
# the writing process is gone (see recording.py).
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
