"""The tables layer on objects with the reading API's attributes, and `lorascope analyze`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import lorascope
from lorascope import analysis
from lorascope.analysis import batch, driver, jobs
from lorascope.cli import app
from lorascope.errors import UsageError

from analysis_fakes import lora_run


@pytest.fixture
def runs():
    return lora_run("adamw", seed=0), lora_run("came", seed=1)


def test_stats_table_shape_and_values(runs):
    df = analysis.stats_table(runs[0])
    assert list(df.columns[:6]) == analysis.KEYS
    assert len(df) == 2 * 3 * 6  # modules × (A, B, dW) × steps
    row = df[(df.module == "transformer.h.0.attn.c_attn") & (df.matrix == "A") & (df.step == 10)].iloc[0]
    A = runs[0].modules["transformer.h.0.attn.c_attn"].A[2].astype(np.float64)
    assert row["mean"] == pytest.approx(A.mean()) and row.spectral_norm == pytest.approx(np.linalg.norm(A, 2))
    assert (row.layer, row.role) == (0, "attn.c_attn")
    b0 = df[(df.matrix == "B") & (df.step == 0)]
    assert (b0.status == "zero").all()
    dw = df[(df.matrix == "dW") & (df.module == "transformer.h.1.mlp.c_fc")]
    m = runs[0].modules["transformer.h.1.mlp.c_fc"]
    want = [np.linalg.norm(m.delta_w(t).astype(np.float64)) for t in range(6)]
    np.testing.assert_allclose(dw.frobenius, want, rtol=1e-6)


def test_spectra_and_singular_values_tables(runs):
    sv = analysis.singular_values_table(runs[0])
    sp = analysis.spectra_table(runs[0])
    m = runs[0].modules["transformer.h.1.mlp.c_fc"]
    got = sv[(sv.module == "transformer.h.1.mlp.c_fc") & (sv.matrix == "dW") & (sv.step == 25)].sort_values("index")
    np.testing.assert_allclose(got.value, np.linalg.svd(m.delta_w(5).astype(np.float64), compute_uv=False)[:4], rtol=1e-6)
    assert sp[(sp.matrix == "dW") & (sp.step == 0)].effective_rank.isna().all()  # ΔW = 0 at init


def test_fits_table_flags_zero_b_and_finds_uniform_a(runs):
    df = analysis.fits_table(runs[0], analysis.Options(fit_samples=None))
    b0 = df[(df.matrix == "B") & (df.step == 0)]
    assert (b0.status == "zero").all() and (b0.best_family == "zero").all() and b0.ks.isna().all()
    a0 = df[(df.matrix == "A") & (df.step == 0) & df.best]
    assert (a0.family == "uniform").all()  # kaiming-uniform-like A at init
    changes = analysis.best_family_changes(df)
    assert ((changes.matrix == "B") & (changes.step == 5) & (changes.before == "zero")).sum() == 2


def test_geometry_table_only_with_w0(runs):
    g = analysis.geometry_table(runs[0])
    assert set(g.matrix) == {"dW"} and len(g) == 12
    assert g[g.step == 0].w0_projection.isna().all() and (g[g.step > 0].amplification > 0).all()
    no_w0 = lora_run("x", w0=False)
    assert analysis.geometry_table(no_w0).empty


def test_similarity_table(runs):
    df = analysis.similarity_table(list(runs))
    final = df[(df.reference == "final") & (df.step == df.other_step)]
    np.testing.assert_allclose(final.phi, 1.0)
    between = df[df.reference == "run"]
    assert set(between.run) == {"adamw"} and set(between.other_run) == {"came"}
    assert ((between.phi >= 0) & (between.phi <= 1)).all()
    assert (df.baseline == np.maximum(df.i, df.j) / np.where(df.matrix == "A", 16, 24)).all()


def test_similarity_of_a_zero_matrix_is_nan_with_a_status(runs):
    df = analysis.similarity_table(list(runs))
    b0 = df[(df.matrix == "B") & (df.step == 0) & (df.reference == "final")]
    assert len(b0) and b0.phi.isna().all() and (b0.status == "zero").all()  # B = 0 at init spans nothing
    assert (df[df.step > 0].status == "ok").all() and df[df.status == "ok"].phi.notna().all()


def test_similarity_never_compares_with_a_dead_b(runs):
    dead = lora_run("dead", seed=2)
    name = "transformer.h.0.attn.c_attn"
    dead.modules[name].B[:] = 0.0
    df = analysis.similarity_table([runs[0], dead])
    own = df[(df.run == "dead") & (df.module == name) & (df.matrix == "B")]
    assert len(own) and own.phi.isna().all() and (own.status == "zero").all()
    against = df[(df.reference == "run") & (df.module == name) & (df.matrix == "B")]
    assert len(against) and against.phi.isna().all() and (against.status == "zero_reference").all()
    alive = df[(df.reference == "run") & (df.module != name)]
    assert (alive.status == "ok").all() and alive.phi.between(0, 1).all()


def test_runs_without_common_modules_are_refused():
    with pytest.raises(UsageError, match="no module in common"):
        analysis.similarity_table([lora_run("a"), lora_run("b", modules=("other.0.q",))])


def test_histogram_table_shares_edges(runs):
    h = analysis.histogram_table(list(runs), bins=8)
    for _, g in h.groupby(["module", "matrix"]):
        assert g.groupby(["run", "step"]).left.apply(tuple).nunique() == 1
        per_snapshot = g.groupby(["run", "step"])["count"].sum()
        assert (per_snapshot == per_snapshot.iloc[0]).all()


def test_health_findings_name_a_dead_b():
    rec = lora_run("dead")
    m = rec.modules["transformer.h.0.attn.c_attn"]
    m.B[:] = 0.0
    found = analysis.health_findings(rec)
    assert any(f.module == "transformer.h.0.attn.c_attn" and f.matrix == "B" and f.severity == "error" for f in found)


def test_every_finding_names_its_run():
    recs = [lora_run(name, seed=i) for i, name in enumerate(("a", "b"))]
    for rec in recs:
        rec.modules["transformer.h.0.attn.c_attn"].B[:] = 0.0
    recs[1].scalars.loc[3, "loss"] = np.nan
    found = analysis.health_findings(recs)
    assert {(f.run, f.matrix) for f in found} == {("a", "B"), ("b", "B"), ("b", None)}
    assert any(str(f).startswith("error: transformer.h.0.attn.c_attn B of run b at step") for f in found)
    assert any(str(f).startswith("error: run b at step 4: the loss is nan") for f in found)


def _spiky_run():
    """Only B's first column ever moves, so ΔW = B A has rank one: one direction holds all its energy."""
    rec = lora_run("spiky")
    for m in rec.modules.values():
        m.B[:, :, 1:] = 0.0
    return rec


@pytest.mark.parametrize("top_k", [1, 3])
def test_spike_check_works_whatever_top_k(top_k):
    found = analysis.health_findings(_spiky_run(), analysis.Options(top_k=top_k))
    spikes = [f for f in found if "one singular direction" in f.message]
    assert sorted(f.module for f in spikes) == sorted(_spiky_run().modules)


def test_memory_bounded_by_one_module(runs, monkeypatch):
    # every module's series is released before the next is read
    alive = []
    real = driver.ModuleAnalysis.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        alive.append(self)
    monkeypatch.setattr(driver.ModuleAnalysis, "__init__", spy)
    import gc
    import weakref
    refs = []
    monkeypatch.setattr(driver, "concat", lambda frames, columns: pd.concat(frames) if frames else pd.DataFrame())
    analysis.analyze(runs[0], ("stats",), progress=lambda d, t, l: (refs.append(weakref.ref(alive.pop())), gc.collect()))
    gc.collect()
    assert len(refs) == 2 and all(r() is None for r in refs)


def test_cli_writes_tables_and_prints_findings(tmp_path, monkeypatch):
    dead = lora_run("dead")
    dead.modules["transformer.h.1.mlp.c_fc"].B[:] = 0.0
    recs = {"a.h5": lora_run("a"), "dead.h5": dead}
    for name in recs:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(lorascope, "open", lambda p, **k: recs[p.name])
    out = tmp_path / "out" / "t.csv"
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "a.h5"), str(tmp_path / "dead.h5"),
                                 "-o", str(out), "--tables", "stats,similarity"])
    assert r.exit_code == 0, r.output
    stats = pd.read_csv(tmp_path / "out" / "t.stats.csv")
    assert set(stats.run) == {"a", "dead"} and list(stats.columns[:6]) == analysis.KEYS
    assert len(pd.read_csv(tmp_path / "out" / "t.similarity.csv")) > 0
    assert "error: transformer.h.1.mlp.c_fc B" in r.output
    one = tmp_path / "one.parquet"
    r = CliRunner().invoke(app, ["analyze", str(tmp_path / "a.h5"), "-o", str(one), "--no-health"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(one)) == len(stats[stats.run == "a"])


@pytest.mark.parametrize("args, message", [
    (["--tables", "bogus"], "unknown table bogus"),
    (["-o", "x.txt"], "must end in .csv or .parquet"),
    (["--criterion", "waic"], "aic or bic"),
])
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    (tmp_path / "a.h5").write_bytes(b"")
    monkeypatch.setattr(lorascope, "open", lambda p, **k: lora_run("a"))
    base = ["analyze", str(tmp_path / "a.h5")]
    if "-o" not in args:
        base += ["-o", str(tmp_path / "o.csv")]
    r = CliRunner().invoke(app, base + args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def _cli(tmp_path, monkeypatch, recs: dict, *args):
    """Runs `lorascope analyze` on fake recordings named by file name; returns the result and
    the names of the recordings it opened."""
    for name in recs:
        (tmp_path / name).write_bytes(b"")
    opened = []
    monkeypatch.setattr(lorascope, "open", lambda p, **k: opened.append(p.name) or recs[p.name])
    r = CliRunner().invoke(app, ["analyze", *(str(tmp_path / n) for n in recs), *args])
    return r, opened


@pytest.mark.parametrize("output, message", [
    ("somefile.h5/o.csv", "is a file, not a folder"),
    ("somefile.h5/deeper/o.csv", "is a file, not a folder"),
    ("/proc/lorascope-x/o.csv", "cannot write the tables to /proc/lorascope-x"),
])
def test_cli_unwritable_output_fails_before_the_analysis(tmp_path, monkeypatch, output, message):
    if output.startswith("/proc") and not __import__("os").path.isdir("/proc"):
        pytest.skip("needs Linux's /proc")
    (tmp_path / "somefile.h5").write_bytes(b"")
    r, opened = _cli(tmp_path, monkeypatch, {"a.h5": lora_run("a")}, "-o", str(tmp_path / output))
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and opened == []  # no recording was read


def test_cli_failed_write_is_one_line(tmp_path, monkeypatch):
    import importlib
    cli = importlib.import_module("lorascope.cli.analyze")

    def full_disk(df, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setitem(cli._WRITERS, ".csv", full_disk)
    r, _ = _cli(tmp_path, monkeypatch, {"a.h5": lora_run("a")}, "-o", str(tmp_path / "o.csv"), "--no-health")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "could not write" in r.output and "No space left on device" in r.output


def test_cli_writes_family_changes_without_the_fits(tmp_path, monkeypatch):
    # A starts uniform and large Gaussian steps bury it: uniform at step 0, Gaussian from step 5
    rec = lora_run("a", a_drift=0.2, shape=(32, 256))
    out = tmp_path / "changes.csv"
    r, _ = _cli(tmp_path, monkeypatch, {"a.h5": rec}, "-o", str(out), "--tables", "family_changes", "--no-health")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert list(df.columns) == [*analysis.KEYS, "before", "after"]
    a = df[df.matrix == "A"]
    assert sorted(a.module) == sorted(rec.modules)
    assert (a.step == 5).all() and (a.before == "uniform").all() and (a.after == "normal").all()
    b = df[df.matrix == "B"].groupby("module").first()
    assert (b.step == 5).all() and (b.before == "zero").all()
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["changes.csv"]  # the fits were only read


def test_cli_module_warnings_say_which_run(tmp_path, monkeypatch):
    recs = {f"{n}.h5": lora_run(n, seed=i) for i, n in enumerate(("a", "b"))}
    for rec in recs.values():
        rec.modules["transformer.h.1.mlp.c_fc"].B[:] = 0.0
    r, _ = _cli(tmp_path, monkeypatch, recs, "-o", str(tmp_path / "o.csv"))
    assert r.exit_code == 0, r.output
    for run in ("a", "b"):
        assert f"error: transformer.h.1.mlp.c_fc B of run {run} at step" in r.output


def test_fits_on_evenly_spaced_steps_say_so(runs):
    df = analysis.fits_table(runs[0], analysis.Options(fit_steps=3, fit_samples=64))
    assert sorted(set(df.step)) == [0, 10, 25]  # snapshots 0, 2 (2.5 rounds to even) and 5 of 6
    assert (df.fitted_steps == 3).all() and (df.recorded_steps == 6).all() and (df.n == 64).all()
    st = analysis.stats_table(runs[0], analysis.Options(quantile_samples=50))
    dense = st[st.matrix != "dW"]
    assert (dense.quantile_n == 50).all()  # A has 64, B 96 entries: both subsampled


@pytest.mark.parametrize("prefetch, most", [(False, 1), (True, 2)])
def test_prefetch_keeps_at_most_two_series_and_changes_no_number(runs, monkeypatch, prefetch, most):
    import gc
    import weakref
    read, refs, peak = driver.read_series, [], []

    def spy(module, *buffers):  # counts the series alive once this one is read
        A, B = read(module, *buffers)
        gc.collect()
        refs.append(weakref.ref(A))
        peak.append(sum(r() is not None for r in refs))
        return A, B
    monkeypatch.setattr(driver, "read_series", spy)
    got = analysis.analyze(list(runs), ("stats", "spectra"), analysis.Options(prefetch=prefetch))
    monkeypatch.setattr(driver, "read_series", read)
    want = analysis.analyze(list(runs), ("stats", "spectra"), analysis.Options(prefetch=False, workers=1))
    # the bound is what matters; whether the prefetch thread got ahead of the analysis at all
    # depends on thread timing, so with prefetch the peak may be 1 or 2
    assert len(refs) == 4 and max(peak) <= most
    for name in ("stats", "spectra"):
        pd.testing.assert_frame_equal(got.tables[name], want.tables[name])
    assert [str(f) for f in got.findings] == [str(f) for f in want.findings]


def test_histogram_counts_equal_numpy_per_snapshot():
    a, b = lora_run("adamw", seed=0), lora_run("came", seed=1, T=4)  # runs of different lengths
    b.modules["transformer.h.0.attn.c_attn"].A[2, 1, 3] = np.nan  # counted as outside, not binned
    h = analysis.histogram_table([a, b], bins=8)
    for (name, matrix), g in h.groupby(["module", "matrix"]):
        series = {rec.run_name: getattr(rec.modules[name], matrix).astype(np.float64) for rec in (a, b)}
        finite = np.concatenate([x[np.isfinite(x)] for x in series.values()])
        edges = np.linspace(finite.min(), finite.max(), 9)  # shared by both runs
        for (run, step), s in g.groupby(["run", "step"]):
            s = s.sort_values("bin")
            np.testing.assert_allclose(np.r_[s.left, s.right.iloc[-1]], edges, rtol=1e-12)
            x = series[run][step // 5].reshape(-1)
            want = np.histogram(x[np.isfinite(x)], edges)[0]
            np.testing.assert_array_equal(s["count"], want, err_msg=f"{run} {name} {matrix} {step}")
            assert (s.outside == (~np.isfinite(x)).sum()).all()
    assert h[(h.run == "came") & (h.step == 10) & (h.matrix == "A") & (h.module == "transformer.h.0.attn.c_attn")].outside.iloc[0] == 1


def test_similarity_between_runs_of_different_ranks_equals_numpy():
    r4, r8 = lora_run("r4", seed=0, rank=4), lora_run("r8", seed=1, rank=8)
    df = analysis.similarity_table([r4, r8])
    between = df[df.reference == "run"]
    for name in r4.modules:
        for matrix, d in (("A", 16), ("B", 24)):
            bases = []
            for rec in (r4, r8):
                X = getattr(rec.modules[name], matrix)[-1].astype(np.float64)
                U, _, Vt = np.linalg.svd(X, full_matrices=False)
                bases.append(Vt.T if matrix == "A" else U)  # right-singular for A, left for B
            U1, U2 = bases
            assert (U1.shape[1], U2.shape[1]) == (4, 8)
            got = between[(between.module == name) & (between.matrix == matrix)]
            assert sorted(zip(got.i, got.j)) == [(1, 1), (4, 8)]
            assert set(got.run) == {"r4"} and set(got.other_run) == {"r8"} and set(got.step) == {25}
            for i, j in ((1, 1), (4, 8)):
                row = got[(got.i == i) & (got.j == j)].iloc[0]
                want = np.linalg.norm(U1[:, :i].T @ U2[:, :j]) ** 2 / min(i, j)
                assert row.phi == pytest.approx(want, rel=1e-6, abs=1e-9), (name, matrix, i, j)
                assert row.baseline == max(i, j) / d


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_cutting_the_time_axis_among_threads_changes_no_number(monkeypatch, workers):
    """Each module's computations are cut into `workers` slices of snapshots that read two
    snapshots before them (updates, cosines) and the first one (distances); joined, the slices
    give the numbers of one uncut pass, also where B's zero start lies in another slice than the
    one computing a distance. Equal up to float32 rounding: BLAS sums the rows of a chunk in an
    order that depends on the chunk's length (a kurtosis near 0 moved by 5e-7); a wrong slice
    edge would move whole values or turn them NaN."""
    monkeypatch.setattr(jobs, "MIN_PIECE", 1)
    run = lora_run("cut", seed=5, T=23)
    names = ("stats", "spectra", "singular_values", "fits")
    cut = analysis.analyze(run, names, analysis.Options(workers=workers))
    whole = analysis.analyze(run, names, analysis.Options(workers=1))
    for name in names:
        pd.testing.assert_frame_equal(cut.tables[name], whole.tables[name], check_exact=False, rtol=1e-5, atol=2e-6)
    assert [str(f) for f in cut.findings] == [str(f) for f in whole.findings]


def test_slices_cover_the_series_once_and_respect_the_minimum():
    job = jobs.Job(lambda sl: None, jobs.LOOKBACK)
    for T, pieces in [(1, 4), (31, 2), (64, 2), (1000, 7), (5, 1)]:
        got = job.slices(T, pieces)
        assert got[0].start == 0 and got[-1].stop == T
        assert all(a.stop == b.start for a, b in zip(got, got[1:]))
        assert len(got) == max(1, min(pieces, T // jobs.MIN_PIECE))
    assert len(jobs.Job(lambda sl: None).slices(1000, 7)) == 1  # not cut along time


def test_scratch_lets_the_old_buffer_go_before_taking_a_larger_one():
    import tracemalloc

    s = batch.Scratch()
    tracemalloc.start()  # before the first block: it counts only what it saw allocated
    try:
        s("series", (1 << 20,), np.float64)  # 8 MiB
        grown = s("series", (1 << 21,), np.float64)  # 16 MiB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert grown.shape == (1 << 21,) and grown.dtype == np.float64
    assert peak < (16 + 4) * 2**20  # 24 MiB if the 8 MiB block were still held
    assert s("series", (10, 3), np.float32).base is not None  # smaller asks reuse the block
