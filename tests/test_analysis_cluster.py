"""Analysis and report on a Dask cluster (``scheduler=``, ``--scheduler``): a real
``distributed.LocalCluster`` of two single-threaded worker processes analyses real recordings,
each task opening its file by path, and the tables equal the in-process ones exactly."""
from __future__ import annotations

import pytest

pytest.importorskip("distributed", reason="the Dask tests need pip install 'lorascope[dask]'")

import pandas as pd  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import lorascope  # noqa: E402
from lorascope.analysis import TABLES, Options, analyze  # noqa: E402
from lorascope.cli import app  # noqa: E402
from lorascope.errors import UsageError  # noqa: E402
from lorascope.report.build import build_report  # noqa: E402
from tests.report_recordings import record_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    # processes: each worker its own interpreter, as on a real cluster (no shared h5py state)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    # small on purpose: the suite runs on 2 shared cores; attn only: 4 modules per run; run a
    # with two micro-steps per step and their gradients, so that grad_noise has rows
    return [record_tiny_run(folder / "a.h5", "a", steps=5, seed=0, targets=("attn",), grad_accum=2, grads=True),
            record_tiny_run(folder / "b.h5", "b", steps=5, seed=1, optimizer="sgd", targets=("attn",))]


def _equal(here: dict[str, pd.DataFrame], there: dict[str, pd.DataFrame]) -> None:
    assert list(here) == list(there)
    for name in here:
        # exactly: the same rows in the same order, the same numbers bit for bit
        pd.testing.assert_frame_equal(here[name], there[name], check_exact=True, obj=name)


def test_every_table_on_a_cluster_equals_the_in_process_tables(cluster, runs):
    recs = [lorascope.open(p) for p in runs]
    try:
        options = Options(fit_steps=3, max_steps=4, workers=2)
        here = analyze(recs, TABLES.names(), options, health=True)
        seen = []
        there = analyze(recs, TABLES.names(), options, health=True, scheduler=cluster,
                        progress=lambda done, total, label: seen.append((done, total)))
    finally:
        for rec in recs:
            rec.close()
    _equal(here.tables, there.tables)
    assert [str(f) for f in here.findings] == [str(f) for f in there.findings]
    assert all(len(t) for t in here.tables.values() if t is not here.tables["findings"])
    # every run's module counted once, whichever task finished first
    modules = sum(len(lorascope.open(p).modules) for p in runs)
    assert seen[-1] == (modules, modules) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_tables_of_one_run_at_a_time_are_split_by_run_and_module(cluster, runs):
    """Without a table that compares runs, every run's module is a task of its own."""
    recs = [lorascope.open(p) for p in runs]
    try:
        here = analyze(recs, ("stats",), Options(workers=1), health=True)
        there = analyze(recs, ("stats",), Options(workers=1), health=True, scheduler=cluster)
    finally:
        for rec in recs:
            rec.close()
    _equal(here.tables, there.tables)
    assert [str(f) for f in here.findings] == [str(f) for f in there.findings]


def test_the_cli_analyzes_on_the_scheduler_it_is_given(cluster, runs, tmp_path):
    here, there = tmp_path / "here.csv", tmp_path / "there.csv"
    args = ["analyze", *map(str, runs), "--tables", "similarity", "--no-health"]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "-o", str(here)]).exit_code == 0
    result = runner.invoke(app, [*args, "-o", str(there), "--scheduler", cluster])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(here), pd.read_csv(there), check_exact=True)


def test_a_scheduler_that_does_not_answer_is_one_sentence(runs, tmp_path, monkeypatch):
    import socket

    import lorascope.cluster

    monkeypatch.setattr(lorascope.cluster, "CONNECT_TIMEOUT", 2)  # not the 20 s a real cluster gets
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(app, ["analyze", str(runs[0]), "-o", str(tmp_path / "t.csv"),
                                      "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert result.exit_code != 0
    assert "could not reach a Dask scheduler" in result.output and "Traceback" not in result.output


def test_recordings_without_a_file_cannot_go_to_a_cluster(cluster, runs):
    class InMemory:  # what a Recording offers, without the path a worker would open
        def __init__(self, rec):
            self._rec = rec

        def __getattr__(self, name):
            if name == "path":
                raise AttributeError(name)
            return getattr(self._rec, name)

    with lorascope.open(runs[0]) as rec:
        with pytest.raises(UsageError, match="opened from files"):
            analyze([InMemory(rec)], ("stats",), scheduler=cluster)


def test_the_report_draws_its_modules_on_the_cluster(cluster, runs, tmp_path):
    kinds = ("moments", "similarity")  # one per run and one across runs: enough to compare pages
    here = build_report(runs, tmp_path / "here", max_modules=1, max_steps=4, title="t", figure_kinds=kinds)
    there = build_report(runs, tmp_path / "there", max_modules=1, max_steps=4, title="t", figure_kinds=kinds,
                         scheduler=cluster)
    drawn = sorted(p.name for p in here.parent.glob("*.png"))
    assert drawn and sorted(p.name for p in there.parent.glob("*.png")) == drawn
    # the same page, apart from the time it was generated
    strip = lambda page: "\n".join(l for l in page.read_text().splitlines() if "generated" not in l)  # noqa: E731
    assert strip(here) == strip(there)
