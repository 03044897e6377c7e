"""The command line answers at once: `lorascope --help` and `lorascope CMD --help` import no
training code (torch, transformers), and the top-level help imports no command at all. Each case
runs in a fresh interpreter, since this one has imported everything already; what is checked is
sys.modules, not time."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lorascope.cli import app
from lorascope.cli.app import COMMANDS

HEAVY = {"torch", "transformers", "datasets", "peft"}
# what the reading and plotting side brings; none of it is needed to list commands or to
# describe the training commands' options
READING = {"numpy", "scipy", "pandas", "matplotlib", "h5py", "pydantic"}

_PROBE = """
import json, sys
sys.argv = ["lorascope", *json.loads(sys.argv[1])]
from lorascope.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _run(*args: str) -> tuple[int, set[str], str]:
    """Runs `lorascope ARGS` in a fresh interpreter; returns the exit code, the top-level
    packages and lorascope modules it imported, and its stdout."""
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(args))],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    modules = set(report["modules"])
    return report["code"], {m.split(".")[0] for m in modules} | {m for m in modules if m.startswith("lorascope.")}, done.stdout


def test_top_level_help_imports_no_command():
    code, imported, out = _run("--help")
    assert code == 0
    assert not imported & (HEAVY | READING)
    assert not {m for m in imported if m.startswith("lorascope.cli.") and m not in ("lorascope.cli.app",)}
    for name, entry in COMMANDS.items():
        assert name in out and entry.help in " ".join(out.split())


@pytest.mark.parametrize("command", ["record", "sweep"])
def test_training_commands_describe_themselves_without_training_code(command):
    code, imported, out = _run(command, "--help")
    assert code == 0 and "Usage:" in out
    assert not imported & (HEAVY | READING)
    assert f"lorascope.cli.{command}" in imported
    assert not {"lorascope.runs.session", "lorascope.lora.layer", "lorascope.train.optim"} & imported


@pytest.mark.parametrize("command", ["info", "analyze", "report"])
def test_reading_commands_help_imports_no_training_code(command):
    code, imported, out = _run(command, "--help")
    assert code == 0 and "Usage:" in out
    assert not imported & HEAVY


def test_the_table_says_what_each_command_says():
    """The one line `lorascope --help` shows is the first line of the command's own help."""
    runner = CliRunner()
    for name, entry in COMMANDS.items():
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert " ".join(result.output.split()).find(entry.help) > 0, (name, entry.help)


def test_help_lists_the_registries_choices():
    from lorascope.data import SOURCES, TASKS
    from lorascope.lora import INITS
    from lorascope.models import MODELS
    from lorascope.train import OPTIMIZERS, SCHEDULES

    record = " ".join(CliRunner().invoke(app, ["record", "--help"]).output.split())
    for registry in (MODELS, SOURCES, TASKS, OPTIMIZERS, SCHEDULES, INITS):
        for name in registry.names():
            assert name in record, (registry.kind, name)
        # the description beside the name, as the declaring front door wrote it
        first = registry.names()[0]
        assert registry.description(first).split()[0] in record
    sweep = " ".join(CliRunner().invoke(app, ["sweep", "--help"]).output.split())
    for registry in (OPTIMIZERS, SCHEDULES, INITS):
        assert ", ".join(registry.names()) in sweep


def test_no_study_names_in_help():
    runner = CliRunner()
    pages = [runner.invoke(app, ["--help"]).output] + [runner.invoke(app, [n, "--help"]).output for n in COMMANDS]
    for page in pages:
        # "000's design", "(004", but not a number such as 2,000
        assert not re.search(r"(?<![\d,.])00\d(?!\d)", page), page


def test_an_unknown_command_suggests_the_nearest():
    result = CliRunner().invoke(app, ["recrod"])
    assert result.exit_code == 2 and "record" in result.output


# --- the reading side starts light -----------------------------------------------------------
LIGHT_LOOK = {"pandas", "scipy", "matplotlib"}  # what a quick look (`info`, `--help`) does without


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from report_recordings import record_tiny_run

    return record_tiny_run(tmp_path_factory.mktemp("imports") / "run.h5", "light", steps=3)


@pytest.mark.parametrize("command", ["info", "analyze", "report"])
def test_reading_commands_help_needs_no_tables_or_plots(command):
    code, imported, _ = _run(command, "--help")
    assert code == 0
    assert not imported & LIGHT_LOOK


def test_info_runs_its_health_checks_without_pandas_scipy_or_matplotlib(recording):
    code, imported, out = _run("info", str(recording))
    assert code == 0 and "health\n" in out, out
    assert not imported & (HEAVY | LIGHT_LOOK)


def test_analyze_never_imports_torch(recording, tmp_path):
    code, imported, out = _run("analyze", str(recording), "-o", str(tmp_path / "t.csv"), "--tables", "all",
                               "--fit-samples", "64")
    assert code == 0, out
    assert not imported & HEAVY
    assert (tmp_path / "t.findings.csv").exists() and (tmp_path / "t.step_histograms.csv").exists()


def test_report_never_imports_torch(recording, tmp_path):
    code, imported, out = _run("report", str(recording), "-o", str(tmp_path / "report"), "--max-modules", "1")
    assert code == 0, out
    assert not imported & HEAVY
    assert (tmp_path / "report" / "index.html").exists()


def test_reading_without_a_scheduler_imports_no_dask(tmp_path):
    """dask is imported by --scheduler alone: an analysis in this process never pays for it."""
    from tests.report_recordings import record_tiny_run

    path = record_tiny_run(tmp_path / "run.h5", "run", steps=2, targets=("attn",))
    for args in (["analyze", str(path), "-o", str(tmp_path / "t.csv"), "--no-health"], ["analyze", "--help"],
                 ["report", "--help"]):
        code, imported, _ = _run(*args)
        assert code == 0, args
        assert not imported & {"dask", "distributed"}, args
        assert "lorascope.cluster" not in imported, args
