"""Resuming a recording: the run continues from a checkpoint at optimizer step N, so the new file
holds the old file's committed rows up to step N and appends from there, with no step twice and
none missing.

HDF5 will not reopen a file for writing after its SWMR writer was killed (only ``h5clear`` can
reset its flags), and a killed file may also hold rows past the checkpoint. So resuming writes a
fresh file beside the old one, copies the rows to keep, and replaces the old file by rename: a
crash while copying leaves the old file untouched."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from lorascope.errors import RecordingError
from lorascope.h5.format import FORMAT_VERSION

__all__ = ["resume_seed", "temporary_path", "replace"]

_BLOCK = 64  # rows copied at a time: bounded memory for large recordings


def temporary_path(path: Path) -> Path:
    return path.with_name(path.name + ".resume-tmp")


def replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)  # atomic on POSIX; the writer's open handle follows the inode


def _rows_upto(steps: np.ndarray, step: int) -> int:
    """How many leading rows belong to optimizer steps ≤ ``step`` (steps never decrease)."""
    return int(np.searchsorted(steps, step, side="right"))


def _copy(src: h5py.Dataset, dst: h5py.Dataset, n: int) -> None:
    if dst.shape[0] < n:
        dst.resize(n, axis=0)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        dst[start:stop] = src[start:stop]


def _committed_steps(old: h5py.File, group: str, columns: tuple[str, ...]) -> np.ndarray:
    g = old[group]
    n = min(g[c].shape[0] for c in columns)
    return g["step"][:n]


def resume_seed(old_path: Path, step: int) -> Callable[[h5py.File], dict[str, int]]:
    """A seed for RecordingFile: copies ``old_path``'s committed rows of steps ≤ ``step``."""

    def seed(new: h5py.File) -> dict[str, int]:
        try:
            old = h5py.File(old_path, "r", swmr=True, locking=False)
        except OSError as exc:
            raise RecordingError(
                f"cannot resume {old_path}: it does not open as HDF5 ({exc}); start a new "
                "recording with another output path"
            ) from None
        with old:
            if not 1 <= int(old.attrs.get("lorascope_format", -1)) <= FORMAT_VERSION:
                raise RecordingError(
                    f"cannot resume {old_path}: it is not a lorascope recording of format v1 to "
                    f"v{FORMAT_VERSION}; start a new recording with another output path"
                )
            return _seed(old, new, step, old_path)

    return seed


def _seed(old: h5py.File, new: h5py.File, step: int, old_path: Path) -> dict[str, int]:
    mods_old, mods_new = old["modules"], new["modules"]
    if set(mods_old) != set(mods_new):
        raise RecordingError(
            f"cannot resume {old_path}: it records other LoRA modules than this model has; resume "
            "with the same model, LoRA targets and record.modules"
        )
    for name in mods_new:
        for key in ("A", "B"):
            o, n = mods_old[name][key], mods_new[name][key]
            if o.shape[1:] != n.shape[1:] or o.dtype != n.dtype:
                raise RecordingError(
                    f"cannot resume {old_path}: {name}/{key} was recorded as {o.shape[1:]} {o.dtype}, "
                    f"now {n.shape[1:]} {n.dtype}; resume with the same rank and record.dtype"
                )
    counts = {}
    # snapshots, gradients and optimizer state: an index group and per-module series
    series = {
        "snapshots": (("step", "micro_step", "time"), ("A", "B", "magnitude")),
        "grad_snapshots": (("step", "micro_step", "loss_scale"), ("grad_A", "grad_B")),
    }
    for group, (columns, keys) in series.items():
        if group not in old or group not in new:
            continue
        n = _rows_upto(_committed_steps(old, group, columns), step)
        for c in columns:
            _copy(old[group][c], new[group][c], n)
        for name in mods_new:
            for key in keys:
                if key in mods_old[name] and key in mods_new[name]:
                    _copy(mods_old[name][key], mods_new[name][key], n)
        counts["snapshots" if group == "snapshots" else "grads"] = n
    counts["magnitudes"] = counts.get("snapshots", 0)  # DoRA's rows go with the snapshots
    if "state_snapshots" in old and "state_snapshots" in new:
        n = _rows_upto(old["state_snapshots/step"][:], step)
        _copy(old["state_snapshots/step"], new["state_snapshots/step"], n)
        for name in mods_new:
            for matrix in ("state_A", "state_B"):
                if matrix in mods_old[name] and matrix in mods_new[name]:
                    for key, dst in mods_new[name][matrix].items():
                        if key in mods_old[name][matrix]:
                            _copy(mods_old[name][matrix][key], dst, n)
        counts["state"] = n
    n = _rows_upto(old["updates/step"][:], step)
    _copy(old["updates/step"], new["updates/step"], n)
    if old["updates/norms"].shape[1:] == new["updates/norms"].shape[1:]:
        _copy(old["updates/norms"], new["updates/norms"], n)
    n = _rows_upto(old["scalars/step"][:], step)
    for name, ds in new["scalars"].items():
        if name != "other" and name in old["scalars"]:
            _copy(old["scalars"][name], ds, n)
            logged = old["scalars"][name].attrs.get("logged")
            if n and (logged if logged is not None else not np.isnan(ds[:n]).all()):
                ds.attrs.modify("logged", np.int8(1))
        elif name != "other":  # a column this run adds: NaN for the old rows
            ds.resize(n, axis=0)
            ds[:n] = np.nan
    rows = int(old["scalars/other"].attrs.get("rows", 0))
    other = old["scalars/other"][:rows]
    other = other[other["step"] <= step]
    dst = new["scalars/other"]
    dst.resize(len(other), axis=0)
    dst[:] = other
    dst.attrs.modify("rows", np.int64(len(other)))
    last_time = old["snapshots/time"][counts.get("snapshots", 0) - 1] if counts.get("snapshots") else 0.0
    new.attrs["resumed_from_step"] = int(step)
    new.attrs["resumed_time_offset"] = float(last_time)
    return counts
