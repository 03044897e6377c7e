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


def _record_schedule(path: Path, gamma: float, steps: int = 30) -> Path:
    """A tiny run trained on one fixed batch (its loss falls, then flattens) under AdamW with
    ExponentialLR(gamma): gamma < 1 is study 000's decaying schedule, gamma = 1 a constant lr."""
    import torch

    from lorascope.config import LoraConfig, RecordConfig, RunConfig, config_to_dict
    from lorascope.lora import add_lora
    from lorascope.record import Recorder
    from report_recordings import tiny_gpt2_model

    model = tiny_gpt2_model(0)
    lora = LoraConfig(rank=4, alpha=8.0, targets=["attn"])
    add_lora(model, lora)
    config = RunConfig(name=path.stem, seed=0, lora=lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    schedule = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    tokens = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    with Recorder(path, model, RecordConfig(), run_name=path.stem, run_config=config_to_dict(config),
                  total_steps=steps) as rec:
        rec.start(optimizer=opt)
        for step in range(1, steps + 1):
            loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.on_optimizer_step(step, {"loss": float(loss.detach()), "lr": schedule.get_last_lr()[0]})
            schedule.step()
    return path


def test_a_decaying_learning_rate_stalls_and_a_constant_one_does_not(tmp_path):
    paths = [_record_schedule(tmp_path / "exponential.h5", 0.8), _record_schedule(tmp_path / "constant.h5", 1.0)]
    recs = [lorascope.open(p) for p in paths]
    try:
        result = analyze(recs, ("stats",))
        found = find(evidence(recs, result.tables, result.findings), ["stall"]).sentences
        lr = recs[0].scalar_columns["lr"]
    finally:
        for rec in recs:
            rec.close()
    [stall] = found
    assert stall.run == "exponential" and stall.text.startswith("exponential: ΔW's update per step falls below 5%")
    # the lr there, as a share of its peak, is 0.8^(step - 1): read off the recorded lr column
    step = int(stall.numbers["stall_step"])
    assert stall.numbers["lr_share"] == pytest.approx(lr[step - 1] / lr.max())
    assert stall.numbers["loss_after"] < 0.1 * stall.numbers["loss_before"]
