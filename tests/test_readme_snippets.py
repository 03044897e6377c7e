"""The README's "Recording from your own loop" and "Reading a recording" snippets run as written,
one after the other in a fresh folder. Only the pretrained model is swapped for a tiny Llama
built from a config (nothing is downloaded in tests); everything else is the README's text."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_recording_and_reading_snippets_run_as_written(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    import transformers

    from tests.peft_cases import llama

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: llama())
    monkeypatch.chdir(tmp_path)
    (record,) = _python_blocks("Recording from your own loop")
    reading = _python_blocks("Reading a recording")
    assert len(reading) == 2
    scope: dict = {}
    exec(compile(record, "README: Recording from your own loop", "exec"), scope)
    assert (tmp_path / "recordings/mine.h5").is_file()
    for i, block in enumerate(reading):
        exec(compile(block, f"README: Reading a recording, block {i + 1}", "exec"), scope)
    assert scope["dW"].shape == (64, 64) and scope["peft_setup"]["adapters"]["default"]["r"] == 8
    assert scope["losses"]["loss"].notna().all() and len(scope["losses"]) == 20
    assert "stats" in scope["result"].tables
