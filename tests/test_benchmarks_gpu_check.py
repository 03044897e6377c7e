"""The GPU check (benchmarks/gpu_check.sh and gpu_check.py) on CPU: its dry run prints the plan,
checks the imports and runs every section's code on tiny models; the table's parts (the JUnit
rows, the budget, a failing section) are checked on known inputs. Nothing here asserts on time."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu_check import (
    COLUMNS, PLANS, SECTIONS, Context, Section, collected_rows, dry_verdict, junit_rows, main, missing_imports,
    run_check,
)
from lorascope.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "GPU_CHECK_OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    return done, out


def test_the_dry_run_prints_the_plan_and_a_full_table(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert "LORASCOPE_TORCH='torch==2.13.0' bash scripts/setup.sh --dev" in text
    assert "-m benchmarks.gpu_check --budget-s" in text
    assert "imports: torch, transformers, peft, h5py, pytest, tensorboard, wandb, lorascope: ok" in text
    for name in SECTIONS.names():  # the GPU plan names every section
        assert f"  {name} " in text
    table = text.split("GPU check: DRY RUN", 1)[1]
    assert "tests collected" in table and "not run (dry run: collected only)" in table
    for model in ("tiny-gpt2", "tiny-llama"):
        for measured in ("step time lorascope / none", "step time tensorboard / none",
                         "blocked / raw device→host copy of one snapshot", "tokens/s lorascope / PEFT+Trainer"):
            assert any(model in line and measured in line for line in table.splitlines()), (model, measured)
    # the sharded section: FSDP2 against the unsharded twin on CPU; the HF FSDP2 row says it needs a GPU
    assert any("sharded recording" in line and "fsdp2 vs plain: largest difference" in line for line in table.splitlines())
    assert any("hf_fsdp2" in line and "GPU only" in line for line in table.splitlines())
    assert "failed" not in table and "MISSED" not in table
    written = (out / "table-dry-run.md").read_text()
    assert written.startswith("GPU check: DRY RUN") and "| check " in written


def test_the_shell_script_refuses_an_unknown_option():
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bash benchmarks/gpu_check.sh [--dry-run]" in done.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_real_check_refuses_a_machine_without_a_gpu(capsys, monkeypatch):
    import benchmarks.gpu_check

    monkeypatch.setattr(benchmarks.gpu_check, "missing_imports", lambda: [])  # the dry run checks them
    assert main([]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_train_amp" name="test_fp16_trains_with_a_gradscaler[cuda]" time="1.25"/>
<testcase classname="tests.test_record_amp" name="test_bf16_recording_end_to_end[cuda]" time="0.5">
  <failure message="AssertionError: loss_scale 1.0 != 65536&#10;second line">trace</failure></testcase>
<testcase classname="tests.test_record_devices" name="test_capture[cuda]" time="0">
  <skipped message="needs a CUDA GPU"/></testcase>
</testsuite></testsuites>
"""


def test_junit_rows_say_each_outcome(tmp_path):
    path = tmp_path / "report.xml"
    path.write_text(JUNIT)
    rows = junit_rows(path)
    assert [r["setting"] for r in rows] == ["test_train_amp::test_fp16_trains_with_a_gradscaler[cuda]",
                                            "test_record_amp::test_bf16_recording_end_to_end[cuda]",
                                            "test_record_devices::test_capture[cuda]"]
    assert [r["verdict"] for r in rows] == ["met", "MISSED", "MISSED"]
    assert rows[0]["result"] == "passed (1.2 s)"
    assert rows[1]["result"] == "FAILED: AssertionError: loss_scale 1.0 != 65536"
    assert rows[2]["result"] == "skipped: needs a CUDA GPU"
    assert all(list(r) == COLUMNS for r in rows)


def test_collected_rows_count_the_test_ids():
    output = "tests/test_a.py::test_x[cuda]\ntests/test_b.py::test_y[cuda]\n\n2/600 tests collected (598 deselected)\n"
    (row,) = collected_rows(output)
    assert row["setting"] == "2 tests collected" and row["verdict"] == "—"
    (empty,) = collected_rows("no tests collected (600 deselected)\n")
    assert empty["verdict"] == "MISSED" and "selects nothing" in empty["result"]


def test_a_section_that_fails_or_does_not_fit_is_a_row_and_the_rest_still_run(tmp_path):
    sections: Registry[Section] = Registry("test section")
    ran = []

    def fine(ctx):
        ran.append("fine")
        return [dict(zip(COLUMNS, ("fine", "s", "m", "1.0", "", "met")))]

    def broken(ctx):
        raise RuntimeError("CUDA out of memory\nmore detail")

    sections.register("broken")(Section(broken, 0, "breaks"))
    sections.register("too_long")(Section(fine, 10_000, "needs more than the budget"))
    sections.register("fine")(Section(fine, 0, "works"))
    ctx = Context(PLANS["dry-run"], True, time.monotonic() + 60, log=lambda line: None)
    markdown = tmp_path / "table.md"
    rows = run_check(ctx, markdown=markdown, header="head\n\n", sections=sections)
    assert [r["check"] for r in rows] == ["broken", "too_long", "fine"] and ran == ["fine"]
    assert rows[0]["result"] == "failed: RuntimeError: CUDA out of memory" and rows[0]["verdict"] == "MISSED"
    assert rows[1]["result"].startswith("not run: ") and "needs about 10000 s" in rows[1]["result"]
    assert markdown.read_text().startswith("head\n\n| check ")
    # the dry run keeps the misses of code that broke or did not run, and blanks the speed verdicts
    assert [dry_verdict(r)["verdict"] for r in rows] == ["MISSED", "MISSED", "—"]


def test_missing_imports_name_the_module_and_the_error():
    assert missing_imports(("json", "no_such_module_xyz")) == [
        "no_such_module_xyz (ModuleNotFoundError: No module named 'no_such_module_xyz')"]
