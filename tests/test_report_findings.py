"""Findings end to end, on tiny runs trained and recorded here (two seeds of AdamW and one of
SGD): the sentences `analyze`'s tables give, checked against the recordings read with numpy;
the report opening with the same sentences, each linked to an element of the page; `lorascope
info` and `lorascope analyze` printing them."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lorascope
from lorascope.analysis import analyze
from lorascope.analysis.findings import evidence, find
from lorascope.cli import app
from lorascope.report import build_report
from report_recordings import record_tiny_run

KINDS = ("zero_start", "metrics", "wall_time")


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("findings")
    return [record_tiny_run(folder / f"{name}.h5", name, optimizer=opt, seed=seed, steps=6, targets=("attn",))
            for name, opt, seed in (("adamw-s0", "adamw", 0), ("adamw-s1", "adamw", 1), ("sgd-s2", "sgd", 2))]


def _sentences(recs, modules="*", kinds=KINDS):
    result = analyze(recs, ("stats",), modules=modules)
    return [s for s in find(evidence(recs, result.tables, result.findings), kinds).sentences]


def test_the_sentences_state_what_the_recordings_hold(paths):
    recs = [lorascope.open(p) for p in paths]
    try:
        found = _sentences(recs)
        # B is exactly zero at step 0 and not at step 1 in every recorded module: read with numpy
        for rec in recs:
            for m in rec.modules.values():
                assert not np.any(m.B[0]) and np.any(m.B[1])
        n = len(recs[0].modules)
        zero = [s.text for s in found if s.kind == "zero_start"]
        assert zero == [f"adamw: B leaves zero at step 1 in {2 * n}/{2 * n} modules across 2 seeds",
                        f"sgd-s2: B leaves zero at step 1 in {n}/{n} modules"]
        finals = [float(rec.scalar_columns["eval_loss"][np.isfinite(rec.scalar_columns["eval_loss"])][-1])
                  for rec in recs]
        [table] = [s for s in found if s.kind == "metrics" and s.text.startswith("final eval loss")]
        assert table.numbers["adamw.mean"] == pytest.approx(np.mean(finals[:2]))
        assert table.numbers["adamw.min"] == pytest.approx(min(finals[:2]))
        assert table.numbers["sgd-s2.seeds"] == 1
        # one seed of SGD: no difference between the groups is claimed, whatever the numbers
        assert any("a single seed, so the spread is unknown" in s.text for s in found if s.kind == "metrics")
        assert not any(" than " in s.text for s in found)
    finally:
        for rec in recs:
            rec.close()


@pytest.fixture(scope="module")
def report(paths, tmp_path_factory) -> Path:
    return build_report(paths, tmp_path_factory.mktemp("report"), max_modules=2, figure_kinds=["moments", "fits"])


def test_the_report_opens_with_the_same_sentences_each_linked_into_the_page(paths, report):
    page = report.read_text(encoding="utf-8")
    assert page.index('id="findings"') < page.index('id="runs"')  # the page opens with them
    section = page[page.index('id="findings"'):page.index('id="runs"')]
    ids = set(re.findall(r'id="([^"]+)"', page))
    links = re.findall(r'href="#([^"]+)"', section)
    assert links and all(link in ids for link in links)
    assert "moments figure of transformer.h.0.attn.c_attn" in section
    recs = [lorascope.open(p) for p in paths]
    try:
        shown = list(recs[0].modules)[:2]
        expected = _sentences(recs, shown)
    finally:
        for rec in recs:
            rec.close()
    from html import escape
    for s in expected:
        assert f"<li>{escape(s.text)}" in section, s.text


def test_info_prints_the_sentences_of_its_run_and_names_what_it_leaves_out(paths):
    result = CliRunner().invoke(app, ["info", str(paths[0])])
    assert result.exit_code == 0, result.output
    rec = lorascope.open(paths[0])
    try:
        [expected] = [s.text for s in find(evidence([rec])).sentences if s.kind == "metrics"]
    finally:
        rec.close()
    assert f"findings\n  {expected}\n" in result.output
    assert expected.startswith("final eval loss ") and " at step 6 (best " in expected
    assert "not looked at here: zero_start (needs the stats table)" in result.output


def test_analyze_prints_the_sentences_and_writes_them_beside_the_tables(paths, tmp_path):
    out = tmp_path / "t.csv"
    result = CliRunner().invoke(app, ["analyze", *map(str, paths), "-o", str(out), "--tables", "stats,fits",
                                      "--fit-samples", "256"])
    assert result.exit_code == 0, result.output
    written = (tmp_path / "t.findings.txt").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("adamw: B leaves zero at step 1") for line in written)
    assert any(line.startswith("adamw: A's best family") for line in written)
    for line in written:
        if not line.startswith(("warning", "error", "note")):
            assert f"  {line}\n" in result.stdout


@pytest.mark.browser
def test_a_link_opens_the_collapsed_module_that_holds_its_figure(report, tmp_path):
    """The module figures sit in collapsed <details>: following a sentence's link must open them
    (the HTML standard reveals a fragment's closed ancestors; the page has no script to do it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = report.read_text(encoding="utf-8")
    section = page[page.index('id="findings"'):page.index('id="runs"')]
    target = next(a for a in re.findall(r'href="#([^"]+)"', section) if a.startswith("m0"))
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", f"{report.resolve().as_uri()}#{target}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    module = target.rsplit("-", 1)[0]
    assert re.search(rf'<details id="module-{re.escape(module)}" open', done.stdout), done.stdout[:2000]
