"""Ownership of output files (issue 18): one writer per output, side files named from the full
output name, a finished sweep run recognised by its config and not its name, and the library
refusing to replace a recording it was not asked to replace."""
from __future__ import annotations

import hashlib
import pytest

import lorascope
from lorascope.config import RecordConfig, RunConfig, apply_overrides, config_to_dict
from lorascope.errors import UsageError
from lorascope.outputs import side_files
from lorascope.runs import session
from lorascope.runs.sweep import expand, run_sweep
from tests.cli_process import QUICK_RECORD, run_cli, start_cli, warm  # noqa: F401 - fixture
from tests.h5_fakes import write_recording


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_second_record_to_the_same_output_is_refused_and_the_first_is_intact(tmp_path, warm):
    path = tmp_path / "race.h5"
    steps = 40
    first = start_cli(["record", "-o", path, *QUICK_RECORD, "--steps", steps], tmp_path)
    first.wait_for(f"step {steps // 10}/{steps}")
    second = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", 3], tmp_path)
    assert second.code == 2, second.output
    assert second.error_lines() == [second.stderr.strip()]
    assert "is being written by process" in second.stderr and "-o" in second.stderr
    done = first.wait()
    assert done.code == 0, done.output
    with lorascope.open(path) as rec:
        assert rec.status == "complete" and rec.steps.tolist() == list(range(steps + 1))
    assert not side_files(path).lock.exists()  # released with the run


def test_side_files_come_from_the_full_output_name(tmp_path, warm):
    """-o exp.2024.12.05 and -o exp.2024.12.06 kept one adapters file between them."""
    adapters = []
    for name in ("exp.2024.12.05", "exp.2024.12.06"):
        out = tmp_path / name
        done = run_cli(["record", "-o", out, *QUICK_RECORD, "--steps", 1], tmp_path)
        assert done.code == 0, done.output
        side = side_files(out)
        assert side.adapters.exists() and side.state.exists()
        adapters.append(side.adapters)
    assert adapters[0] != adapters[1]
    assert not (tmp_path / "exp.2024.12.adapters.safetensors").exists()


def _sweep_run(tmp_path, **overrides):
    base = apply_overrides(RunConfig(), overrides)
    (planned,) = expand(base, {"rank": [4]}, tmp_path / "s", "s")
    return base, planned


def _fake_session(monkeypatch) -> list[str]:
    """Replaces training by writing a stand-in file; returns the names of the runs started."""
    started: list[str] = []

    def fake_run(cfg, log=print, **kwargs):
        started.append(cfg.name)
        cfg.output_path().write_bytes(b"new")
        return session.RunSummary(cfg.output_path(), cfg.output_path(), 1, False, 0.5)

    monkeypatch.setattr(session, "run", fake_run)
    return started


def test_a_finished_run_is_skipped_only_when_its_config_is_this_runs(tmp_path, monkeypatch):
    started = _fake_session(monkeypatch)
    base, planned = _sweep_run(tmp_path, **{"optim.steps": 20})
    planned.path.parent.mkdir(parents=True)
    write_recording(planned.path, config=config_to_dict(planned.config))
    result = run_sweep(base, {"rank": [4]}, name="s", folder=tmp_path, log=lambda line: None)
    assert result.skipped == ["s-r4"] and started == []

    # the same --name with other --steps: not "complete, skipped", and not deleted either
    before = _digest(planned.path)
    changed = apply_overrides(base, {"optim.steps": 40})
    with pytest.raises(UsageError, match=r"another config \(optim.steps was 20, now 40\).*another --name"):
        run_sweep(changed, {"rank": [4]}, name="s", folder=tmp_path, log=lambda line: None)
    assert _digest(planned.path) == before and started == []


def test_an_interrupted_run_of_another_config_is_redone(tmp_path, monkeypatch):
    started = _fake_session(monkeypatch)
    base, planned = _sweep_run(tmp_path)
    planned.path.parent.mkdir(parents=True)
    write_recording(planned.path, config={"seed": 1}, status="interrupted")
    run_sweep(base, {"rank": [4]}, name="s", folder=tmp_path, log=lambda line: None)
    assert started == ["s-r4"] and planned.path.read_bytes() == b"new"


def test_the_recorder_and_the_callback_refuse_an_existing_recording(tmp_path):
    from lorascope.record import Recorder
    from lorascope.record.hf import LorascopeCallback
    from tests.record_helpers import tiny_lora_gpt2

    path = tmp_path / "run.h5"
    write_recording(path)
    before = _digest(path)
    model = tiny_lora_gpt2()
    with pytest.raises(UsageError, match="already exists; pass overwrite=True"):
        Recorder(path, model, RecordConfig())
    with pytest.raises(UsageError, match="already exists; pass overwrite=True"):
        LorascopeCallback(path)
    assert _digest(path) == before

    with Recorder(path, model, RecordConfig(), overwrite=True) as rec:
        rec.start()
    with lorascope.open(path) as rec:
        assert rec.status == "complete" and rec.run_name == "run"
