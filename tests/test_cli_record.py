"""`lorascope record` end to end on a tiny model: the file it writes, what it refuses, resuming,
and bit-for-bit reproducibility on CPU."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import lorascope
from lorascope.cli import app

QUICK = ["--model", "tiny-gpt2", "--set", "data.max_examples=48", "--set", "eval_batches=1",
         "--set", "generate_samples=1", "--batch-size", "2"]


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def record(path, *extra):
    result = invoke("record", "-o", str(path), *QUICK, *extra)
    assert result.exit_code == 0, result.output
    return result


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("record", "sweep", "info", "analyze", "report"):
        assert command in result.output


def test_record_writes_a_complete_recording(tmp_path):
    path = tmp_path / "run.h5"
    result = record(path, "--steps", "3", "--rank", "4", "--optimizer", "came")
    assert "recording:" in result.output and "generated:" in result.output
    with lorascope.open(path) as rec:
        assert rec.status == "complete"
        assert list(rec.steps) == [0, 1, 2, 3]
        assert rec.config["lora"]["rank"] == 4 and rec.config["optim"]["optimizer"] == "came"
        assert all(m.rank == 4 for m in rec.modules.values())
        assert list(rec.scalars["step"]) == [1, 2, 3]
    assert (tmp_path / "run.adapters.safetensors").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rank", "0"], "lora.rank"),
        (["--alpha", "-1"], "lora.alpha"),
        (["--lr", "0"], "optim.lr"),
        (["--grad-accum", "0"], "grad_accum"),
        (["--targets", "nothing_like_this"], "nothing_like_this"),
        (["--set", "lora.rnak=4"], "unknown setting"),
        (["--set", "novalue"], "key=value"),
        (["--data", "/no/such/file.jsonl"], "file.jsonl"),
        (["--model", "/no/such/model_dir"], "model_dir"),
    ],
)
def test_bad_input_is_one_sentence(tmp_path, args, message):
    result = invoke("record", "-o", str(tmp_path / "x.h5"), *QUICK, "--steps", "1", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("flag, value", [("--optimizer", "adamm"), ("--init", "zeros"), ("--schedule", "step")])
def test_unknown_registry_names_list_the_valid_ones(flag, value):
    result = invoke("record", flag, value)
    assert result.exit_code == 2
    assert value in result.output and "Traceback" not in result.output


def test_config_file_errors(tmp_path):
    bad = tmp_path / "run.toml"
    bad.write_text("[optim]\nlr = 'fast'\n")
    result = invoke("record", "-c", str(bad))
    assert result.exit_code == 2 and "optim.lr takes a number" in result.output


def test_existing_recording_is_not_overwritten(tmp_path):
    path = tmp_path / "run.h5"
    record(path, "--steps", "1")
    result = invoke("record", "-o", str(path), *QUICK, "--steps", "1")
    assert result.exit_code == 2 and "--resume" in result.output


def test_resume_appends_without_gaps_or_duplicates(tmp_path):
    path = tmp_path / "run.h5"
    record(path, "--steps", "2")
    record(path, "--steps", "4", "--resume")
    with lorascope.open(path) as rec:
        assert list(rec.steps) == [0, 1, 2, 3, 4]
        assert list(rec.scalars["step"]) == [1, 2, 3, 4]
        assert rec.status == "complete"


def test_same_config_and_seed_give_the_same_recording(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    record(a, "--steps", "2", "--seed", "7")
    record(b, "--steps", "2", "--seed", "7")
    with lorascope.open(a) as ra, lorascope.open(b) as rb:
        for name, m in ra.modules.items():
            assert np.array_equal(m.A[:], rb.modules[name].A[:])
            assert np.array_equal(m.B[:], rb.modules[name].B[:])


def test_a_sweep_file_records_its_base_run(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text('[lora]\nrank = 2\n[sweep]\nrank = [4, 8]\n')
    result = record(tmp_path / "base.h5", "-c", str(config), "--steps", "1")
    assert "recording its base run only" in result.output
    with lorascope.open(tmp_path / "base.h5") as rec:
        assert rec.config["lora"]["rank"] == 2
