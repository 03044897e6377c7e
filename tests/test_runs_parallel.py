"""`lorascope sweep --jobs N`: the runs of a grid trained side by side in worker processes, each
with its share of the cores. Checked against the same grid run one by one (the recordings hold
the same numbers), with real tiny runs; a signal to the sweep stops every running run resumably
and starts no other; a run that fails stops the rest and its sentence reaches the user."""
from __future__ import annotations

import io
import multiprocessing
import shutil
import signal
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import lorascope
from lorascope.config import RunConfig, apply_overrides
from lorascope.errors import UsageError
from lorascope.runs.parallel import _Labelled, _start_worker
from lorascope.runs.sweep import run_sweep
from tests.cli_process import start_cli

QUICK = {"model.name": "tiny-gpt2", "data.max_examples": 32, "eval_batches": 1, "generate_samples": 0,
         "data.batch_size": 2, "optim.steps": 3}
GRID = {"optimizer": ["adamw", "sgd", "came"]}


def _weights(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with lorascope.open(path) as rec:
        assert rec.status == "complete"
        return {name: (m.A[:], m.B[:]) for name, m in rec.modules.items()}


def test_side_by_side_records_the_same_runs_as_one_by_one_and_skips_finished_ones(tmp_path):
    base = apply_overrides(RunConfig(), QUICK)
    alone = run_sweep(base, GRID, name="g", folder=tmp_path / "alone", log=lambda line: None, jobs=1)
    (tmp_path / "together" / "g").mkdir(parents=True)
    finished = tmp_path / "together" / "g" / "g-adamw.h5"
    shutil.copy(alone.paths[0], finished)  # a run finished earlier: skipped, not redone
    lines: list[str] = []
    together = run_sweep(base, GRID, name="g", folder=tmp_path / "together", log=lines.append, jobs=2)
    assert [p.name for p in together.paths] == [p.name for p in alone.paths]
    assert together.interrupted is None and together.skipped == ["g-adamw"]
    assert lines[1] == "[1/3] g-adamw: complete, skipped"
    assert lines[2].startswith("training 2 runs, 2 at a time with ")
    done = [line for line in lines if ": done" in line]
    assert sorted(line.split("] ")[1].split(":")[0] for line in done) == ["g-came", "g-sgd"]
    assert [line.split("]")[0] for line in done] == ["[2/3", "[3/3"]
    for mine, reference in zip(together.paths[1:], alone.paths[1:]):
        got, expected = _weights(mine), _weights(reference)
        assert got.keys() == expected.keys()
        for name in got:  # one thread against several: the same sums, perhaps in another order
            for a, b in zip(got[name], expected[name]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_run_that_fails_stops_the_others_and_its_sentence_is_raised(tmp_path):
    base = apply_overrides(RunConfig(), {**QUICK, "optim.steps": 2000})
    with pytest.raises(UsageError, match="no_such_source"):
        run_sweep(base, {"data.source": ["news", "no_such_source"]}, name="g", folder=tmp_path,
                  log=lambda line: None, jobs=2)
    # the other run was stopped at a step, closed as interrupted, and can be resumed or redone
    with lorascope.open(next((tmp_path / "g").glob("*news*.h5"))) as rec:
        assert rec.stored_status == "interrupted" and len(rec.steps) < 2000


def test_a_ctrl_c_to_the_sweep_stops_every_running_run_and_starts_no_other(tmp_path):
    """SIGINT as the terminal sends it to the sweep's process (the workers, in their own session,
    only hear it from the sweep); SIGTERM and SIGHUP take the same handler."""
    signum = signal.SIGINT
    args = ["sweep", "--model", "tiny-gpt2", "--steps", "3000", "--set", "data.max_examples=32",
            "--set", "eval_batches=1", "--set", "generate_samples=0", "--set", "data.batch_size=2",
            "--optimizer", "adamw,sgd,came", "--jobs", "2", "--name", "g", "--no-report",
            "--recordings", str(tmp_path / "rec")]
    sweep = start_cli(args, tmp_path)
    sweep.wait_for("g-adamw: step", timeout=300)
    sweep.wait_for("g-sgd: step", timeout=300)
    sweep.signal(signum)
    finished = sweep.wait(timeout=300)
    assert finished.code == 128 + signum, finished.output
    assert "run the same command again to resume" in finished.stderr
    folder = tmp_path / "rec" / "g"
    assert sorted(p.name for p in folder.glob("*.h5")) == ["g-adamw.h5", "g-sgd.h5"]  # came never started
    for path in folder.glob("*.h5"):
        with lorascope.open(path) as rec:
            assert rec.stored_status == "interrupted" and 0 < len(rec.steps) < 3000


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def test_each_worker_computes_on_its_share_of_the_threads():
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker, initargs=(3,)) as pool:
        assert pool.submit(_threads).result() == 3


def test_a_workers_lines_carry_its_run_name_and_never_redraw_in_place():
    out = io.StringIO()
    stream = _Labelled(out)
    stream.label = "g-sgd"
    stream.write("step 1/3")
    stream.write("  loss 2\n")
    stream.write("\rstep 2/3\nwarning: x\n")
    assert out.getvalue() == "g-sgd: step 1/3  loss 2\ng-sgd: step 2/3\ng-sgd: warning: x\n"
    assert not stream.isatty()
