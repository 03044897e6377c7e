"""A refused `--resume` changes nothing (issue 18): every check that can refuse a resume runs
before the recording is opened for writing, so the recording, its adapters and its state are
byte for byte what they were. (Before: a different record.dtype or a narrower record.modules was
refused with a good sentence and the recording went to `failed` with no snapshots; another
optimizer ended in `KeyError: 'momentum'` and a `failed` file.)"""
from __future__ import annotations

import hashlib

import pytest

import lorascope
from lorascope.outputs import side_files
from tests.cli_process import QUICK_RECORD, run_cli, warm  # noqa: F401 - fixture

STEPS = 4


def _digests(path) -> dict[str, str]:
    side = side_files(path)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (side.recording, side.adapters, side.state)}


@pytest.fixture
def recorded(tmp_path, warm):
    path = tmp_path / "run.h5"
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", STEPS], tmp_path)
    assert done.code == 0, done.output
    return path


@pytest.mark.parametrize("change, named", [
    (["--set", "record.dtype=float16"], "record.dtype"),
    (["--set", "record.modules=*.h.1.*"], "record.modules"),
    (["--optimizer", "sgd"], "optim.optimizer"),
    (["--rank", "2"], "lora.rank"),
], ids=["dtype", "modules", "optimizer", "rank"])
def test_a_refused_resume_leaves_every_file_byte_identical(tmp_path, recorded, change, named):
    before = _digests(recorded)
    done = run_cli(["record", "-o", recorded, *QUICK_RECORD, "--steps", 2 * STEPS, *change, "--resume"], tmp_path)
    assert done.code == 2, done.output
    assert "Traceback" not in done.output
    assert done.error_lines() == [done.stderr.strip().splitlines()[-1]]
    assert f"cannot resume {recorded}" in done.stderr and named in done.stderr
    assert _digests(recorded) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == sorted(before)
    with lorascope.open(recorded) as rec:
        assert rec.status == "complete" and rec.steps.tolist() == list(range(STEPS + 1))


def test_the_same_settings_resume_and_train_further(tmp_path, recorded):
    done = run_cli(["record", "-o", recorded, *QUICK_RECORD, "--steps", 2 * STEPS, "--resume"], tmp_path)
    assert done.code == 0, done.output
    with lorascope.open(recorded) as rec:
        assert rec.status == "complete" and rec.steps.tolist() == list(range(2 * STEPS + 1))
