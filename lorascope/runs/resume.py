"""Whether a run may continue a recording (``--resume``), decided before anything is written.

A resume appends to hours of recorded training. Every reason to refuse it is checked here, on
the file opened read-only and the checkpoint's presence, before the model loads and long before
the recording is opened for writing: a refused resume leaves the recording, its adapters and its
state byte for byte as they were. (Refusing later, once the file was open, used to mark it
``failed`` with no snapshots, and another optimizer ended in ``KeyError: 'momentum'``.)"""
from __future__ import annotations

from pathlib import Path

from lorascope.config import RunConfig, config_differences, config_to_dict
from lorascope.errors import LorascopeError, UsageError
from lorascope.outputs import side_files

__all__ = ["RESUMABLE_CHANGES", "check_resume"]

# What may change between a run and its resume: how far to train, where and how often to
# report, how the writer buffers. Everything else shapes the numbers the file already holds
# (model, adapters, data order, optimizer and its state, what and how it is recorded).
RESUMABLE_CHANGES = (
    "optim.steps", "output", "name", "device", "eval_every", "eval_batches", "generate_samples",
    "record.flush_every_steps", "record.flush_every_seconds", "record.queue_size",
)


def check_resume(cfg: RunConfig, output: Path) -> str | None:
    """Refuses, with a sentence, a resume that could not continue ``output`` as the run that
    wrote it; reads, never writes. Returns the recording's status (None: there is none)."""
    side = side_files(output)
    missing = [p.name for p in (side.adapters, side.state) if not p.exists()]
    if missing:
        raise UsageError(
            f"cannot resume: {' and '.join(missing)} must sit beside the recording; start a new run instead"
        )
    if not output.exists():
        return None  # the checkpoint alone: the run continues into a new recording
    import lorascope

    try:
        with lorascope.open(output) as rec:
            recorded, status = rec.config, rec.status
    except LorascopeError as exc:
        raise UsageError(f"cannot resume {output}: {exc}") from None
    changed = config_differences(recorded, config_to_dict(cfg), ignore=RESUMABLE_CHANGES)
    if changed:
        raise UsageError(
            f"cannot resume {output}: it was recorded with other settings ({'; '.join(changed[:4])}); "
            "resume with the settings it was recorded with, or start a new run with another -o"
        )
    return status
