"""The report in a real headless browser (Debian's chromium): the page opens from disk with no
console message, holds no script element even for a run named `<script>...`, and every image
loads. Skipped where chromium is not installed (`apt-get install -y chromium`)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lorascope.report import build_report
from report_recordings import record_tiny_run

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=10000",
]

# Added to a copy of the page only (the report itself has no script): open every collapsed
# section, load lazy images now, and after the load event write how many decoded into the DOM.
_PROBE = """<script>
document.querySelectorAll('details').forEach(function (d) { d.open = true; });
Array.prototype.forEach.call(document.images, function (i) { i.loading = 'eager'; });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script>"""


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    folder = tmp_path_factory.mktemp("browser")
    runs = [
        record_tiny_run(folder / "a.h5", "adamw", steps=4, seed=0),
        record_tiny_run(folder / "b.h5", "<script>alert(1)</script>", optimizer="sgd", steps=4, seed=1),
    ]
    return build_report(runs, folder / "report", max_modules=1)


def test_page_loads_without_console_messages_or_scripts(report, tmp_path):
    done = _chromium(report, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<title>lorascope report" in done.stdout
    assert "<script" not in done.stdout.lower()  # the evil run name stayed text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in done.stdout
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == []


def test_every_image_loads(report, tmp_path):
    probe = report.with_name("probe.html")
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
                     encoding="utf-8")
    expected = len(re.findall(r"<img ", report.read_text(encoding="utf-8")))
    done = _chromium(probe, tmp_path / "profile", "--dump-dom")
    assert f'data-images="{expected}/{expected}"' in done.stdout, done.stdout[-500:]
    # the probe itself can fail: a missing file must be counted as not loaded
    (report.parent / "training.png").rename(report.parent / "moved.png")
    try:
        done = _chromium(probe, tmp_path / "profile2", "--dump-dom")
        assert f'data-images="{expected - 1}/{expected}"' in done.stdout
    finally:
        (report.parent / "moved.png").rename(report.parent / "training.png")


def test_screenshot_renders(report, tmp_path):
    shot = tmp_path / "page.png"
    done = _chromium(report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,2400")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
