"""`lorascope.runs.sweep.run_sweep` as a Python user calls it: names checked before any run, the
files an unfinished run left deleted, finished runs skipped, a signal stopping the sweep, and the
progress lines. The training itself is `runs.session.run`, tested on its own; here it is replaced
by a stand-in that writes what a run writes, so each case takes milliseconds."""
from __future__ import annotations

import signal

import pytest

from lorascope.config import RunConfig
from lorascope.errors import UsageError
from lorascope.runs import session
from lorascope.runs.sweep import DEFAULT_AXES, SweepRun, expand, remove_partial, run_sweep


class FakeRuns:
    """Stands in for runs.session.run: records which runs started, leaves their files, and can
    be told to report one run as interrupted by a signal."""

    def __init__(self, interrupt: str = "") -> None:
        self.started: list[str] = []
        self.interrupt = interrupt

    def __call__(self, cfg: RunConfig, log=print, **kwargs) -> session.RunSummary:
        path = cfg.output_path()
        self.started.append(cfg.name)
        path.write_bytes(b"")
        stopped = cfg.name == self.interrupt
        return session.RunSummary(path, path.with_suffix(".adapters.safetensors"), 1, stopped, 0.5,
                                  stop_signal=signal.SIGTERM if stopped else None)


@pytest.fixture
def fake(monkeypatch):
    def install(interrupt: str = "", complete: set[str] = frozenset()):
        runs = FakeRuns(interrupt)
        monkeypatch.setattr(session, "run", runs)
        # a run is complete when its name says so: the real check opens the recording
        monkeypatch.setattr("lorascope.runs.sweep.is_complete", lambda path: path.stem in complete)
        return runs
    return install


def test_a_grid_runs_in_order_and_says_where_it_is(tmp_path, fake):
    runs = fake()
    lines: list[str] = []
    result = run_sweep(RunConfig(), {"optimizer": ["adamw", "sgd"], "rank": [4, 8]}, name="g",
                       folder=tmp_path, log=lines.append)
    assert runs.started == ["g-adamw-r4", "g-adamw-r8", "g-sgd-r4", "g-sgd-r8"]
    assert result.paths == [tmp_path / "g" / f"{n}.h5" for n in runs.started]
    assert result.interrupted is None and result.report is None and result.skipped == []
    assert lines[0] == f"sweep g: 4 runs over optimizer, rank -> {tmp_path / 'g'}/"
    assert lines[1] == "[1/4] g-adamw-r4"  # no estimate before a run has finished
    assert lines[2].startswith("[2/4] g-adamw-r8, about ") and lines[2].endswith(" min left")


def test_no_axes_runs_the_default_grid(tmp_path, fake):
    runs = fake()
    run_sweep(RunConfig(), name="d", folder=tmp_path, log=lambda line: None)
    assert len(runs.started) == len(DEFAULT_AXES["optimizer"]) * len(DEFAULT_AXES["init"])


def test_complete_runs_are_skipped_and_unfinished_ones_redone_from_nothing(tmp_path, fake):
    runs = fake(complete={"g-adamw"})
    folder = tmp_path / "g"
    folder.mkdir()
    left = [folder / "g-sgd.h5", folder / "g-sgd.state.pt", folder / "g-sgd.adapters.safetensors"]
    for path in left:
        path.write_text("from an interrupted run")
    other = folder / "g-sgd-extra.h5"  # another run's file: not this run's name plus a suffix
    other.write_text("keep")
    result = run_sweep(RunConfig(), {"optimizer": ["adamw", "sgd"]}, name="g", folder=tmp_path,
                       log=lambda line: None)
    assert runs.started == ["g-sgd"] and result.skipped == ["g-adamw"]
    assert not left[1].exists() and not left[2].exists()  # the stand-in run did not write these
    assert left[0].read_bytes() == b""  # the run's own new recording
    assert other.read_text() == "keep"


def test_a_signal_stops_the_sweep_after_that_run(tmp_path, fake):
    runs = fake(interrupt="g-came")
    result = run_sweep(RunConfig(), {"optimizer": ["adamw", "came", "sgd"]}, name="g", folder=tmp_path,
                       report=tmp_path / "report", log=lambda line: None)
    assert runs.started == ["g-adamw", "g-came"]
    assert result.interrupted.name == "g-came" and result.stop_signal == signal.SIGTERM
    assert result.report is None and not (tmp_path / "report").exists()


def test_a_bad_name_anywhere_in_the_grid_fails_before_the_first_run(tmp_path, fake):
    runs = fake()
    with pytest.raises(UsageError, match="adamm"):
        run_sweep(RunConfig(), {"optimizer": ["adamw", "adamm"]}, folder=tmp_path, log=lambda line: None)
    with pytest.raises(UsageError, match="zeros"):
        run_sweep(RunConfig(), {"init": ["kaiming_uniform", "zeros"]}, folder=tmp_path, log=lambda line: None)
    assert runs.started == [] and not (tmp_path / "sweep").exists()


def test_remove_partial_deletes_only_that_runs_files(tmp_path):
    (run,) = expand(RunConfig(), {"rank": [4]}, tmp_path, "s")
    assert isinstance(run, SweepRun) and run.path == tmp_path / "s-r4.h5"
    mine = [tmp_path / "s-r4.h5", tmp_path / "s-r4.adapters.safetensors", tmp_path / "s-r4.h5.creating"]
    theirs = [tmp_path / "s-r48.h5", tmp_path / "s-r4-b.h5"]
    for path in mine + theirs:
        path.write_text("x")
    assert remove_partial(run) == sorted(mine)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in mine)
