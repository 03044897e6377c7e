"""The CLI's error boundary (issue 18): an unexpected exception in any command is a bug, and it
ends in one line that says so and where the traceback was written, exit code 1, never in a
traceback on the terminal. Each command is driven through its boundary by making the library call
it makes raise; and the `next:` line after `record` can be pasted whatever the path holds."""
from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from lorascope.cli import app
from lorascope.cli.app import COMMANDS
from tests.cli_process import QUICK_RECORD, run_cli, warm  # noqa: F401 - fixture
from tests.h5_fakes import write_recording

# command → (the library call it makes, the arguments that get it there)
CALLS = {
    "record": ("lorascope.runs.session.run", lambda tmp: ["record", "-o", str(tmp / "run.h5")]),
    "sweep": ("lorascope.runs.sweep.run_sweep", lambda tmp: ["sweep", "--recordings", str(tmp), "--rank", "4"]),
    "info": ("lorascope.open", lambda tmp: ["info", str(write_recording(tmp / "rec.h5").path)]),
    "analyze": ("lorascope.analysis.analyze",
                lambda tmp: ["analyze", str(write_recording(tmp / "rec.h5").path), "-o", str(tmp / "t.csv")]),
    "report": ("lorascope.report.build_report",
               lambda tmp: ["report", str(write_recording(tmp / "rec.h5").path), "-o", str(tmp / "report")]),
    "repair": ("lorascope.h5.repair.repair", lambda tmp: ["repair", str(write_recording(tmp / "rec.h5").path)]),
}


def test_every_command_is_covered():
    assert set(CALLS) == set(COMMANDS)


def _explode(*args, **kwargs):
    raise RuntimeError("an unexpected failure\nover two lines")


@pytest.mark.parametrize("command", list(CALLS))
def test_an_unexpected_exception_is_one_line_and_a_saved_traceback(tmp_path, monkeypatch, command):
    target, arguments = CALLS[command]
    args = arguments(tmp_path)
    monkeypatch.setattr(target, _explode)
    log = tmp_path / "bug.log"
    monkeypatch.setenv("LORASCOPE_LOG", str(log))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: lorascope failed unexpectedly, a bug")
    assert "RuntimeError: an unexpected failure over two lines" in last and str(log) in last
    written = log.read_text()
    assert written.startswith("Traceback") and "_explode" in written


def test_without_lorascope_log_the_traceback_goes_to_the_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("LORASCOPE_LOG", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr("lorascope.open", _explode)
    result = CliRunner().invoke(app, ["info", str(write_recording(tmp_path / "rec.h5").path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (saved,) = tmp_path.glob("lorascope-bug-*.log")
    assert str(saved) in result.stderr and "RuntimeError" in saved.read_text()


def test_an_unwritable_log_still_gives_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASCOPE_LOG", str(tmp_path / "missing" / "bug.log"))
    monkeypatch.setattr("lorascope.open", _explode)
    result = CliRunner().invoke(app, ["info", str(write_recording(tmp_path / "rec.h5").path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the traceback could not be saved" in result.stderr


def test_usage_errors_and_sentences_keep_their_code(tmp_path):
    assert CliRunner().invoke(app, ["info", str(tmp_path / "absent.h5")]).exit_code == 2
    assert CliRunner().invoke(app, ["record", "--no-such-flag"]).exit_code == 2


@pytest.mark.parametrize("folder", ["with space", "paren (1)", "quote's $HOME"])
def test_the_next_command_is_shell_quoted(tmp_path, warm, folder):
    out = tmp_path / folder / "run.h5"
    done = run_cli(["record", "-o", out, *QUICK_RECORD, "--steps", 1], tmp_path)
    assert done.code == 0, done.output
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("next: ")]
    # what a shell makes of the pasted line: the path, whole
    words = subprocess.run(["sh", "-c", "printf '%s\\n' " + line[len("next: "):]],
                           capture_output=True, text=True, check=True).stdout
    assert words.splitlines() == ["lorascope", "report", str(out)]
