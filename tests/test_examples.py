"""The example study files: each loads as a sweep file, the README runs each of them, the
classification studies evaluate on enough held-out reviews to tell accuracy from chance, and
study 001 records what its gradient-noise table needs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from lorascope.runs.sweep import load_sweep_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_loads_and_the_readme_runs_it(path):
    base, axes = load_sweep_file(path)
    readme = (ROOT / "README.md").read_text()
    assert f"examples/{path.name}" in readme
    # the command in the file's own header is the one the README gives
    command = re.search(r"lorascope (?:sweep|record) -c examples/" + re.escape(path.name) + r"[^\n`]*", path.read_text())
    assert command is not None and command.group(0).strip() in readme


CLASSIFICATION = ["003_svd_init_lora_fa.toml", "004_qkv_vs_head.toml"]


def test_the_classification_studies_are_003_and_004():
    assert [p.name for p in EXAMPLES if load_sweep_file(p)[0].data.task == "classification"] == CLASSIFICATION


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_examples_evaluate_on_at_least_250_reviews(name):
    base, _ = load_sweep_file(ROOT / "examples" / name)
    # the held-out split (10% of 12,808 reviews) is larger than what the evaluation takes
    assert base.eval_batches * base.data.batch_size >= 250


def test_study_001_records_every_micro_steps_gradient():
    base, axes = load_sweep_file(ROOT / "examples" / "001_amp_accumulation.toml")
    assert not axes
    assert base.record.grads and base.optim.grad_accum >= 4


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_the_classification_studies_fit_one_seed_in_the_budget_and_say_how_to_run_three(name):
    """150 steps per run leave room for one seed in ~10 minutes on 2 cores (docs/studies.md);
    the file's header says what three take, and the seed axis comes from the flag."""
    path = ROOT / "examples" / name
    _, axes = load_sweep_file(path)
    assert "seed" not in axes
    assert "--seeds 3" in path.read_text()
