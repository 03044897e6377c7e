"""Fuzzing the reader with mutated recordings: cut short, bytes flipped, attributes and datasets
changed in kind, links added. Whatever the mutation, reading the whole file (``read_everything``)
ends in a correct answer or one RecordingError sentence: never another exception, never a crash
or a hang, never bytes from another file.

Each mutated file is read in a forked child (a crash or a hang in HDF5's C code must fail the test,
not kill or stall the suite), with a deadline; hypothesis draws the mutations from a fixed seed, so
a failure replays."""
from __future__ import annotations

import json
import os
import signal
import shutil
import time
import traceback

import h5py
import numpy as np
import pytest
from h5_fakes import MODULES, read_everything, write_recording
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorascope.errors import RecordingError

EXAMPLES = int(os.environ.get("LORASCOPE_FUZZ_EXAMPLES", "500"))
DEADLINE_S = 20.0  # per file; a reader that waits out HDF5's retries takes minutes
MARKER = np.float32(4242.4242)  # the outside file's values

_OK, _FAILED, _FOREIGN = 0, 3, 4


class _Corpus(dict):
    def __repr__(self) -> str:  # hypothesis prints the test's arguments on a failure
        return "corpus"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    good = root / "good.h5"
    write_recording(good)
    live = write_recording(root / "live.h5", live=True)
    live_bytes = (root / "live.h5").read_bytes()
    live.close("complete")
    outside = root / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["A"] = np.full((4, 2, 8), MARKER, np.float32)
    raw = root / "raw.bin"
    np.full((4, 2, 8), MARKER, "<f4").tofile(raw)
    read_everything(good)  # imports the reader's modules here, once, not in every forked child
    return _Corpus(root=root, good=good.read_bytes(), live=live_bytes, outside=outside, raw=raw)


def _objects(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visit(names.append)
    return ["", *names]


_VALUES = [np.array([1, 2]), "text", b"\xff\xfe", 3.5, -1, 2**62, np.zeros((2, 2)), json.dumps([1]),
           "[" * 5000, json.dumps({"a": 1}), np.float64("nan"), True]


def _mutate_structure(path, kind: str, pick: int, value: int, corpus) -> None:
    with h5py.File(path, "r+") as f:
        names = _objects(f)
        name = names[pick % len(names)]
        obj = f[name] if name else f
        if kind == "attr":
            keys = list(obj.attrs) or ["lorascope_format"]
            obj.attrs[keys[value % len(keys)]] = _VALUES[value % len(_VALUES)]
        elif kind == "dataset" and isinstance(obj, h5py.Dataset):
            shape = obj.shape
            del f[name]
            replacements = [np.zeros(shape[:1] or (1,), "S4"), 7.0, np.zeros((max(shape[0] - 1, 0), *shape[1:]), "f4"),
                            np.zeros((*shape[:-1], shape[-1] + 1) if shape else (2,), "f8"),
                            np.zeros(shape, "u2"), np.zeros(shape, "i8")]
            f.create_dataset(name, data=replacements[value % len(replacements)])
        elif kind == "link":
            group = obj if isinstance(obj, h5py.Group) else obj.parent
            target = f"{group.name.rstrip('/')}/fuzzed"
            links = [h5py.SoftLink(group.name), h5py.SoftLink("/nowhere"),
                     h5py.ExternalLink(str(corpus["outside"]), "A"), h5py.SoftLink(target)]
            if isinstance(obj, h5py.Dataset) and value % 2:  # replace the dataset itself by a link
                del f[name]
                f[name] = h5py.ExternalLink(str(corpus["outside"]), "A")
            else:
                f[target] = links[value % len(links)]
        elif kind == "external" and isinstance(obj, h5py.Dataset) and obj.ndim:
            shape, dtype = obj.shape, obj.dtype
            del f[name]
            f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(corpus["raw"]), 0, h5py.h5f.UNLIMITED)])
        elif kind == "delete" and name:
            del f[name]


def _read_in_child(path) -> tuple[int, str]:
    """(outcome, detail) of read_everything(path) in a forked child, with a deadline."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe and the exit code, never return
        os.close(read_fd)
        code, detail = _OK, ""
        try:
            arrays = read_everything(path)
            if any(np.isin(MARKER, np.asarray(a, dtype=np.float32)).any() for a in arrays if np.size(a)):
                code, detail = _FOREIGN, "values from the outside file came back"
        except RecordingError:
            pass
        except BaseException:
            code, detail = _FAILED, traceback.format_exc()
        os.write(write_fd, detail.encode()[-4000:])
        os._exit(code)
    os.close(write_fd)
    started = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - started > DEADLINE_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return _FAILED, f"no answer within {DEADLINE_S} s"
        time.sleep(0.002)
    with os.fdopen(read_fd, "rb") as pipe:
        detail = pipe.read().decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        return _FAILED, f"the reader crashed with signal {os.WTERMSIG(status)}"
    return os.WEXITSTATUS(status), detail


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(["good", "live"]), st.floats(0.0, 1.0)),
    st.tuples(st.just("flip"), st.sampled_from(["good", "live"]),
              st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.sampled_from(["attr", "dataset", "link", "external", "delete"]), st.integers(0, 10**6),
              st.integers(0, 10**6)),
)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=mutations)
def test_a_mutated_recording_reads_or_is_refused_with_a_sentence(corpus, mutation):
    path = corpus["root"] / "mutant.h5"
    kind = mutation[0]
    if kind == "truncate":
        data = corpus[mutation[1]]
        path.write_bytes(data[:int(mutation[2] * len(data))])
    elif kind == "flip":
        data = bytearray(corpus[mutation[1]])
        for where, bits in mutation[2]:
            data[min(int(where * len(data)), len(data) - 1)] ^= bits
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(corpus["good"])
        _mutate_structure(path, kind, mutation[1], mutation[2], corpus)
    outcome, detail = _read_in_child(path)
    assert outcome == _OK, f"{mutation}: {detail}"


def test_the_fuzz_corpus_reads_whole(corpus, tmp_path):
    for name in ("good", "live"):
        path = tmp_path / f"{name}.h5"
        path.write_bytes(corpus[name])
        assert _read_in_child(path) == (_OK, "")
    shutil.rmtree(tmp_path, ignore_errors=True)
