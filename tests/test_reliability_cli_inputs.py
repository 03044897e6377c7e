"""Every bad input of the issue, given to every command that takes it, in a real process: the
exit code is not 0, the last line says `error: ...` (or, for a value the option's declared type
refuses, the CLI framework's usage error), and no traceback is printed.

The table (``CASES``) is also run by ``benchmarks/kill_stress.py``, which counts the outcomes
for docs/reliability.md."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import pytest

from tests.cli_process import QUICK_RECORD, Finished, run_cli, warm  # noqa: F401 - fixture

__all__ = ["Case", "CASES", "make_inputs", "judge"]


@dataclass(frozen=True)
class Case:
    command: str
    bad: str  # what is wrong, in words (the test id)
    args: Callable[[dict[str, Path]], list[str]]  # argv after the command, from the prepared inputs
    says: tuple[str, ...] = ()  # words the error must contain (a name, the valid choices)
    root_cannot: bool = False  # permission bits do not stop root: the case is skipped as root


def make_inputs(folder: Path) -> dict[str, Path]:
    """Bad files of every kind, and two small real recordings (with no module in common)."""
    folder.mkdir(parents=True, exist_ok=True)
    f: dict[str, Path] = {"dir": folder}
    for name, targets in (("attn", "attn"), ("mlp", "mlp")):
        path = folder / f"{name}.h5"
        if not path.exists():
            done = run_cli(["record", "-o", path, *QUICK_RECORD, "--steps", "2", "--targets", targets], folder)
            assert done.code == 0, done.output
        f[name] = path
    f["missing"] = folder / "no_such_recording.h5"
    f["not_hdf5"] = folder / "notes.h5"
    f["not_hdf5"].write_text("these are notes, not a recording\n")
    f["truncated"] = folder / "truncated.h5"
    data = f["attn"].read_bytes()
    f["truncated"].write_bytes(data[: len(data) // 2])
    f["foreign"] = folder / "foreign.h5"
    with h5py.File(f["foreign"], "w") as h:
        h["x"] = [1, 2, 3]
    f["newer"] = folder / "newer.h5"
    shutil.copy(f["attn"], f["newer"])
    with h5py.File(f["newer"], "r+") as h:
        h.attrs["lorascope_format"] = 99
    f["unreadable"] = folder / "locked.h5"
    shutil.copy(f["attn"], f["unreadable"])
    f["unreadable"].chmod(0)
    f["empty_data"] = folder / "empty.jsonl"
    f["empty_data"].write_text("")
    f["bad_data"] = folder / "broken.jsonl"
    f["bad_data"].write_text('{"instruction": "a", "output": "b"}\n{this is not json\n')
    f["no_columns"] = folder / "columns.csv"
    f["no_columns"].write_text("colour,size\nred,3\nblue,4\n")
    f["unknown_keys"] = folder / "unknown.toml"
    f["unknown_keys"].write_text("[lora]\nrnak = 4\ncolour = 'red'\n")
    f["wrong_types"] = folder / "types.toml"
    f["wrong_types"].write_text("[optim]\nlr = 'fast'\n")
    f["not_toml"] = folder / "broken.toml"
    f["not_toml"].write_text("[optim\nlr = = 3\n")
    f["unknown_json"] = folder / "unknown.json"
    f["unknown_json"].write_text('{"lora": {"rank": 4, "colour": "red"}}')
    f["missing_config"] = folder / "no_such_config.toml"
    return f


# --- the table -------------------------------------------------------------------------------

_RECORDING_FILES = {
    "missing file": ("missing", ("no_such_recording.h5",)),
    "unreadable file": ("unreadable", ("locked.h5",)),
    "not HDF5": ("not_hdf5", ("notes.h5",)),
    "truncated HDF5": ("truncated", ("truncated.h5",)),
    "HDF5 but not a recording": ("foreign", ("foreign.h5",)),
    "newer format version": ("newer", ("newer.h5", "upgrade")),
}
_READERS: dict[str, Callable[[Path, Path], list[str]]] = {
    "info": lambda rec, d: [str(rec)],
    "analyze": lambda rec, d: [str(rec), "-o", str(d / "out" / "t.csv")],
    "report": lambda rec, d: [str(rec), "-o", str(d / "out" / "report")],
}

# (bad input, flags for record, flags for sweep, words the error names)
_SETTINGS: list[tuple[str, list[str], list[str], tuple[str, ...]]] = [
    ("unknown optimizer", ["--optimizer", "adamm"], ["--optimizer", "adamm"], ("adamm", "adamw")),
    ("unknown schedule", ["--schedule", "stepwise"], ["--schedule", "stepwise"], ("stepwise", "cosine")),
    ("unknown init", ["--init", "zeros"], ["--init", "zeros"], ("zeros",)),
    ("unknown task", ["--task", "poetry"], ["--set", "data.task=poetry"], ("poetry", "instruction")),
    ("rank 0", ["--rank", "0"], ["--rank", "0"], ("lora.rank",)),
    ("negative rank", ["--rank", "-4"], ["--rank", "-4"], ("lora.rank",)),
    ("alpha 0", ["--alpha", "0"], ["--alpha", "0"], ("lora.alpha",)),
    ("negative alpha", ["--alpha", "-1"], ["--alpha", "-1"], ("lora.alpha",)),
    ("lr 0", ["--lr", "0"], ["--lr", "0"], ("optim.lr",)),
    ("negative lr", ["--lr", "-1e-3"], ["--lr", "-1e-3"], ("optim.lr",)),
    ("accumulation 0", ["--grad-accum", "0"], ["--set", "optim.grad_accum=0"], ("grad_accum",)),
    ("target matching nothing", ["--targets", "nothing_like_this"], ["--set", "lora.targets=nothing_like_this"],
     ("nothing_like_this",)),
    ("unknown --set key", ["--set", "lora.rnak=4"], ["--set", "lora.rnak=4"], ("rnak",)),
    ("--set without =", ["--set", "rank4"], ["--set", "rank4"], ("key=value",)),
    ("--set of the wrong type", ["--set", "lora.rank=four"], ["--set", "lora.rank=four"], ("lora.rank",)),
]
_DATA_FILES = {
    "empty dataset file": ("empty_data", ("empty.jsonl",)),
    "malformed dataset file": ("bad_data", ("broken.jsonl",)),
    "dataset without usable columns": ("no_columns", ("instruction", "colour")),
}
_CONFIG_FILES = {
    "config with unknown keys": ("unknown_keys", ("rnak", "colour")),
    "config with a wrong type": ("wrong_types", ("optim.lr",)),
    "config that is not TOML": ("not_toml", ("broken.toml",)),
    "JSON config with an unknown key": ("unknown_json", ("colour",)),
    "missing config file": ("missing_config", ("no_such_config.toml",)),
}


def _record(flags: Callable[[dict], list[str]]) -> Callable[[dict[str, Path]], list[str]]:
    return lambda f: ["-o", str(f["dir"] / "out" / "run.h5"), *QUICK_RECORD, "--steps", "1", *flags(f)]


def _sweep(flags: Callable[[dict], list[str]]) -> Callable[[dict[str, Path]], list[str]]:
    return lambda f: ["--model", "tiny-gpt2", "--steps", "1", "--set", "data.max_examples=48", "--no-report",
                      "--recordings", str(f["dir"] / "sweeps"), "--name", "bad", "--seed", "0", *flags(f)]


def _cases() -> list[Case]:
    cases = []
    for command, argv in _READERS.items():
        for bad, (key, says) in _RECORDING_FILES.items():
            cases.append(Case(command, bad, lambda f, k=key, a=argv: a(f[k], f["dir"]), says,
                              root_cannot=key == "unreadable"))
    cases.append(Case("report", "recordings with no module in common",
                      lambda f: [str(f["attn"]), str(f["mlp"]), "-o", str(f["dir"] / "out" / "r")], ("in common",)))
    cases.append(Case("record", "resume from an unreadable recording",
                      lambda f: ["-o", str(f["not_hdf5"]), *QUICK_RECORD, "--steps", "4", "--resume"], ("resume",)))
    for bad, record_flags, sweep_flags, says in _SETTINGS:
        cases.append(Case("record", bad, _record(lambda f, x=record_flags: x), says))
        cases.append(Case("sweep", bad, _sweep(lambda f, x=sweep_flags: x), says))
    for bad, (key, says) in _DATA_FILES.items():
        cases.append(Case("record", bad, _record(lambda f, k=key: ["--data", str(f[k])]), says))
        cases.append(Case("sweep", bad, _sweep(lambda f, k=key: ["--set", f"data.source={f[k]}"]), says))
    for bad, (key, says) in _CONFIG_FILES.items():
        cases.append(Case("record", bad, lambda f, k=key: ["-c", str(f[k]), "-o", str(f["dir"] / "out" / "c.h5")], says))
        cases.append(Case("sweep", bad, lambda f, k=key: ["-c", str(f[k]), "--no-report",
                                                            "--recordings", str(f["dir"] / "sweeps")], says))
    return cases


CASES = _cases()


def judge(case: Case, done: Finished) -> str:
    """'error' (one `error:` line last), 'usage' (the framework's usage error), or a sentence
    saying what is wrong with the outcome."""
    if "Traceback" in done.output:
        return "traceback:\n" + done.stderr[-2000:]
    if done.code == 0:
        return "exit code 0:\n" + done.output[-1000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        if len(errors) != 1 or lines[-1] != errors[0]:
            return "the error is not one last line:\n" + done.stderr[-1000:]
        missing = [w for w in case.says if w.lower() not in errors[0].lower()]
        if missing:
            return f"the error does not name {missing}: {errors[0]}"
        return "error" if done.code == 2 else f"exit code {done.code} with {errors[0]}"
    usage = [line for line in lines if line.startswith("Error: ")]
    if usage and done.code == 2:
        missing = [w for w in case.says if w.lower() not in done.stderr.lower()]
        return f"the usage error does not name {missing}" if missing else "usage"
    return f"exit code {done.code} without an error line:\n" + done.output[-1000:]


@pytest.fixture(scope="module")
def inputs(warm):
    files = make_inputs(warm / "inputs")
    yield files
    files["unreadable"].chmod(0o644)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.bad}" for c in CASES])
def test_bad_input_gives_one_line_and_no_traceback(case, inputs):
    if case.root_cannot and os.geteuid() == 0:
        pytest.skip("root reads a file whatever its permission bits")
    done = run_cli([case.command, *case.args(inputs)], inputs["dir"])
    assert judge(case, done) in ("error", "usage"), judge(case, done)


# one case per command as `python cli.py ...`, exactly what a user types
_BY_COMMAND = {c.command: c for c in CASES if not c.root_cannot}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_BY_COMMAND.values()), ids=list(_BY_COMMAND))
def test_bad_input_through_the_real_entry_point(case, inputs):
    done = run_cli([case.command, *case.args(inputs)], inputs["dir"], "exec")
    assert judge(case, done) in ("error", "usage"), judge(case, done)


def test_the_table_covers_every_command():
    assert {c.command for c in CASES} == {"record", "sweep", "info", "analyze", "report"}
    assert len(CASES) >= 60
