"""Recordings and checkpoints are data, never code: the package's source holds no pickle, no
eval/exec, and every torch.load is weights_only=True (checked on the syntax tree, so a comment
or a string cannot fool it); adapters are safetensors; and a checkpoint that carries code is
refused with a sentence instead of being run. (Escaping run names in HTML and keeping output
inside its folder are tested in test_report_*.py and test_cli_info.py.)"""
from __future__ import annotations

import ast
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from lorascope.outputs import side_files
from tests.cli_process import QUICK_RECORD, run_cli, warm  # noqa: F401 - fixture

PACKAGE = Path(__file__).resolve().parents[1] / "lorascope"
SOURCES = sorted(PACKAGE.rglob("*.py"))

# modules that turn bytes into arbitrary objects (or run code while doing it)
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
# calls that unpickle unless told not to: (object, attribute) -> the keyword that makes them safe
UNSAFE_CALLS = {("torch", "load"): ("weights_only", True), ("np", "load"): ("allow_pickle", False),
                ("numpy", "load"): ("allow_pickle", False)}
FORBIDDEN_ATTRIBUTES = {"read_pickle", "to_pickle", "unsafe_load", "full_load"}


def _problems(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                found.append(f"{where} calls {func.id}()")
            if isinstance(func, ast.Attribute):
                if func.attr in FORBIDDEN_ATTRIBUTES:
                    found.append(f"{where} calls .{func.attr}()")
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                if owner == "yaml" and func.attr == "load":
                    found.append(f"{where} calls yaml.load (use yaml.safe_load)")
                rule = UNSAFE_CALLS.get((owner, func.attr))
                if rule is not None:
                    keyword, safe = rule
                    given = {k.arg: k.value for k in node.keywords}
                    value = given.get(keyword)
                    if not (isinstance(value, ast.Constant) and value.value is safe):
                        found.append(f"{where} calls {owner}.{func.attr} without {keyword}={safe}")
    return found


def test_the_package_has_sources_to_scan():
    assert len(SOURCES) > 20 and PACKAGE / "runs" / "session.py" in SOURCES


def test_no_pickle_no_eval_and_every_torch_load_is_weights_only():
    problems = [p for path in SOURCES for p in _problems(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))]
    assert problems == []


@pytest.mark.parametrize("snippet, complaint", [
    ("import pickle", "imports pickle"),
    ("from pickle import loads", "imports from pickle"),
    ("import dill as d", "imports dill"),
    ("eval('1 + 1')", "calls eval()"),
    ("exec('x = 1')", "calls exec()"),
    ("torch.load('x.pt')", "without weights_only=True"),
    ("torch.load('x.pt', weights_only=False)", "without weights_only=True"),
    ("np.load('x.npy', allow_pickle=True)", "without allow_pickle=False"),
    ("df = pd.read_pickle('x')", "read_pickle"),
    ("yaml.load(text)", "yaml.load"),
])
def test_the_scanner_catches_each_kind(snippet, complaint):
    problems = _problems(snippet, "example.py")
    assert len(problems) == 1 and complaint in problems[0]


@pytest.mark.parametrize("snippet", [
    "torch.load('x.pt', weights_only=True)",
    "np.load('x.npy', allow_pickle=False)",
    "model.eval()",  # a method called eval is not the builtin
    "# eval(x) in a comment\ns = 'exec(x) in a string'",
])
def test_the_scanner_passes_safe_code(snippet):
    assert _problems(snippet, "example.py") == []


class _RunsCode:
    """A pickle that would create a file when unpickled: what a hostile checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def recorded(warm):
    path = warm / "secure" / "run.h5"
    done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", "2"], warm)
    assert done.code == 0, done.output
    return path


def test_adapters_are_safetensors(recorded):
    side = side_files(recorded)
    adapters, state = side.adapters, side.state
    assert adapters.name.endswith(".safetensors")
    raw = adapters.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])  # safetensors: a JSON header, then raw tensors
    assert raw[8:9] == b"{" and raw[8 + header_length - 1:8 + header_length].strip() in (b"}", b"")
    with pytest.raises(Exception):
        pickle.loads(raw)  # not a pickle at all


def test_a_checkpoint_carrying_code_is_refused_and_not_run(recorded, tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    for source in recorded.parent.glob("run.*"):
        (folder / source.name).write_bytes(source.read_bytes())
    marker = tmp_path / "code-ran"
    state = side_files(folder / "run.h5").state
    torch.save({"loop": _RunsCode(marker)}, state)  # a pickle, as torch.save writes one
    done = run_cli(["record", "-o", folder / "run.h5", *QUICK_RECORD, "--steps", "4", "--resume"], tmp_path)
    assert not marker.exists()  # weights_only=True never ran it
    assert done.code == 2 and "Traceback" not in done.output, done.output
    assert done.error_lines() and "state.pt" in done.error_lines()[0]


def test_an_adapter_file_that_is_a_pickle_is_refused(recorded, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for source in recorded.parent.glob("run.*"):
        (folder / source.name).write_bytes(source.read_bytes())
    marker = tmp_path / "code-ran"
    adapters = side_files(folder / "run.h5").adapters
    adapters.write_bytes(pickle.dumps(_RunsCode(marker)))
    done = run_cli(["record", "-o", folder / "run.h5", *QUICK_RECORD, "--steps", "4", "--resume"], tmp_path)
    assert not marker.exists()
    assert done.code == 2 and "Traceback" not in done.output, done.output
    assert "safetensors" in done.error_lines()[0]
