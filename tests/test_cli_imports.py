"""The reading side starts light: `info`, `analyze` and `report` never import torch or
transformers, their `--help` needs neither pandas, scipy nor matplotlib, and `info` runs its
health checks without pandas, scipy or matplotlib. Each case runs in a fresh Python process.

The commands are loaded as their modules alone (the `lorascope.cli` package's own __init__ is
not run): what is checked is what these command modules and the library calls behind them
import, whatever else the package's front door loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from report_recordings import record_tiny_run

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json, sys, types
import lorascope
package = types.ModuleType("lorascope.cli")
package.__path__ = [{cli!r}]
sys.modules["lorascope.cli"] = package
from typer.testing import CliRunner
from lorascope.cli.app import app
import lorascope.cli.info, lorascope.cli.analyze, lorascope.cli.report
result = CliRunner().invoke(app, {args!r})
heavy = ("torch", "transformers", "pandas", "scipy", "matplotlib")
print(json.dumps({{"code": result.exit_code, "output": result.output,
                   "loaded": [m for m in heavy if m in sys.modules]}}))
"""


def _run(*args: str) -> dict:
    script = _SCRIPT.format(cli=str(ROOT / "lorascope" / "cli"), args=list(args))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    return record_tiny_run(tmp_path_factory.mktemp("imports") / "run.h5", "light", steps=3)


@pytest.mark.parametrize("command", ["info", "analyze", "report"])
def test_help_imports_nothing_heavy(command):
    got = _run(command, "--help")
    assert got["code"] == 0 and "Usage" in got["output"]
    assert got["loaded"] == []


def test_info_runs_its_health_checks_without_pandas_scipy_or_matplotlib(recording):
    got = _run("info", str(recording))
    assert got["code"] == 0 and "health\n" in got["output"], got["output"]
    assert got["loaded"] == []


def test_analyze_never_imports_torch(recording, tmp_path):
    got = _run("analyze", str(recording), "-o", str(tmp_path / "t.csv"), "--tables", "all", "--fit-samples", "64")
    assert got["code"] == 0, got["output"]
    assert "torch" not in got["loaded"] and "transformers" not in got["loaded"]
    assert (tmp_path / "t.findings.csv").exists() and (tmp_path / "t.step_histograms.csv").exists()


def test_report_never_imports_torch(recording, tmp_path):
    got = _run("report", str(recording), "-o", str(tmp_path / "report"), "--max-modules", "1")
    assert got["code"] == 0, got["output"]
    assert "torch" not in got["loaded"] and "transformers" not in got["loaded"]
    assert (tmp_path / "report" / "index.html").exists()
