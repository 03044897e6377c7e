"""build_report and `lorascope report` on real recordings (a tiny GPT-2 trained a few steps and
recorded by the Recorder): the files exist and are valid, names from recordings are escaped and
cannot leave the output folder, and recordings with nothing in common are refused."""
from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lorascope
from lorascope.cli import app
from lorascope.errors import UsageError
from lorascope.report import build_report
from report_recordings import record_tiny_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("recordings")
    return [
        record_tiny_run(folder / "a.h5", "adamw-run", optimizer="adamw", seed=0),
        record_tiny_run(folder / "b.h5", EVIL, optimizer="sgd", seed=1),
        record_tiny_run(folder / "c.h5", "../../x", optimizer="adamw", lr=3e-3, seed=2),
    ]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    page.close()
    return page


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_report_files_exist_and_are_valid(runs, tmp_path):
    out = tmp_path / "report"
    calls = []
    index = build_report(runs, out, max_modules=2, progress=lambda d, t, w: calls.append((d, t)))
    assert index == out / "index.html"
    page = _parse(out / "index.html")
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    # training + per module: 2 histograms, 2 heatmaps, moments, fits, spectrum, similarity,
    # intruders, magnitude_direction, amplification, asymmetry
    assert len(images) == 1 + 2 * 12
    for src in images:
        png = out / src
        assert png.parent == out and png.read_bytes()[:8] == PNG_MAGIC
    assert {p.name for p in out.iterdir()} == {"index.html", *images}
    assert [tag for tag, _ in page.tags].count("details") == 1 + 2  # one layer group, two modules
    text = " ".join(page.text)
    for heading in ("Runs side by side", "Training", "Summary per module and run", "Modules"):
        assert heading in text
    assert "final ‖ΔW‖_F" in text and "A normal from step" in text
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_run_names_are_escaped(runs, tmp_path):
    build_report(runs[1:2], tmp_path, figure_kinds=["histograms"], max_modules=1)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script" not in [tag for tag, _ in _parse(tmp_path / "index.html").tags]


def test_default_output_stays_inside_reports(runs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(app, ["report", str(runs[2]), "--figures", "histograms", "--max-modules", "1"])
    assert result.exit_code == 0, result.output
    assert _files_under(tmp_path) - _files_under(work) == set()  # nothing written beside work/
    written = _files_under(work)
    assert written and all(p.is_relative_to(work / "reports" / "x") for p in written)
    assert "report written to reports/x/index.html" in result.output


def test_explicit_output_contains_every_file(runs, tmp_path):
    out = tmp_path / "deep" / "out"
    result = CliRunner().invoke(app, ["report", *map(str, runs), "-o", str(out), "--max-modules", "1",
                                      "--figures", "histograms,similarity"])
    assert result.exit_code == 0, result.output
    assert all(p.is_relative_to(out) for p in _files_under(tmp_path / "deep"))
    assert len(list(out.glob("*.png"))) == 1 + 3


def test_no_common_module_is_refused(tmp_path):
    a = record_tiny_run(tmp_path / "attn.h5", "attn-only", targets=("attn",), steps=2)
    b = record_tiny_run(tmp_path / "mlp.h5", "mlp-only", targets=("mlp",), steps=2)
    with pytest.raises(UsageError, match="no module in common"):
        build_report([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_figure_kind_lists_the_valid_ones(runs, tmp_path):
    with pytest.raises(UsageError, match="histograms"):
        build_report(runs[:1], tmp_path, figure_kinds=["histogramz"])


_LIVE_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from report_recordings import record_tiny_run
rec = record_tiny_run(Path({path!r}), "live", steps=4, close=False, flush_every_steps=1)
print("ready", flush=True)
sys.stdin.readline()
rec.close("complete")
"""


@pytest.mark.slow  # a second Python process that imports torch and transformers
def test_report_and_info_of_a_file_being_written(tmp_path):
    """The writer is another process, as in real use (HDF5 refuses a second open of one file in
    the process that writes it)."""
    path = tmp_path / "live.h5"
    script = _LIVE_WRITER.format(tests=str(Path(__file__).parent), path=str(path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "ready"
        with lorascope.open(path) as live:
            assert live.status == "running" and len(live.steps) >= 1
            build_report([live], tmp_path / "out", figure_kinds=["histograms", "moments"], max_modules=1)
        assert (tmp_path / "out" / "index.html").exists()
        result = CliRunner().invoke(app, ["info", str(path)])
        assert result.exit_code == 0, result.output
        assert "status     running" in result.output
    finally:
        writer.communicate("close\n", timeout=120)
    assert writer.returncode == 0
    with lorascope.open(path) as done:
        assert done.status == "complete"


def test_cli_refuses_recordings_with_nothing_in_common(tmp_path):
    a = record_tiny_run(tmp_path / "attn.h5", "attn-only", targets=("attn",), steps=1)
    b = record_tiny_run(tmp_path / "mlp.h5", "mlp-only", targets=("mlp",), steps=1)
    result = CliRunner().invoke(app, ["report", str(a), str(b), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: the recordings") and "no module in common" in result.output
