"""The reader validates before it trusts: every kind of malformed or hostile file is one
RecordingError sentence, found before any data is read, and nothing is ever read from outside the
recording. Each case is built from a good recording by changing one thing with h5py."""
from __future__ import annotations

import json
import os
import shutil
import time

import h5py
import numpy as np
import pytest
from h5_fakes import MODULES, read_everything, write_recording

import lorascope
from lorascope.errors import RecordingError

A = f"modules/{MODULES[0]}/A"
# values no recording holds: if they ever come back from a read, they came from the outside file
FOREIGN = np.full((2, 8), 4242.4242, dtype=np.float32)


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.h5"
    write_recording(path)
    return path


def _changed(good, tmp_path, change, name="bad.h5"):
    path = tmp_path / name
    shutil.copy(good, path)
    with h5py.File(path, "r+") as f:
        change(f, tmp_path)
    return path


def _refused(path, match):
    with pytest.raises(RecordingError, match=match):
        read_everything(path)


def test_the_good_file_reads_whole(good):
    arrays = read_everything(good)
    assert len(arrays) > 20 and not any(np.isin(FOREIGN[0, 0], a).any() for a in arrays)


def _foreign_file(tmp_path):
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["A"] = np.broadcast_to(FOREIGN, (4, 2, 8))
    return outside


def test_an_external_link_is_refused(good, tmp_path):
    outside = _foreign_file(tmp_path)

    def change(f, _):
        del f[A]
        f[A] = h5py.ExternalLink(str(outside), "A")

    _refused(_changed(good, tmp_path, change), "external link.*self-contained")


def test_a_virtual_dataset_over_another_file_is_refused(good, tmp_path):
    outside = _foreign_file(tmp_path)

    def change(f, _):
        del f[A]
        layout = h5py.VirtualLayout(shape=(4, 2, 8), dtype="f4")
        layout[:] = h5py.VirtualSource(str(outside), "A", shape=(4, 2, 8))
        f.create_virtual_dataset(A, layout)

    _refused(_changed(good, tmp_path, change), "virtual dataset.*self-contained")


@pytest.mark.parametrize("target", ["planted", "/etc/passwd"])
def test_external_raw_storage_is_refused(good, tmp_path, target):
    if target == "planted":
        target = str(tmp_path / "raw.bin")
        np.broadcast_to(FOREIGN, (4, 2, 8)).astype("<f4").tofile(target)

    def change(f, _):
        del f[A]
        f.create_dataset(A, shape=(4, 2, 8), dtype="<f4", external=[(target, 0, h5py.h5f.UNLIMITED)])

    _refused(_changed(good, tmp_path, change), "external file.*self-contained")


def test_a_soft_link_loop_is_refused(good, tmp_path):
    def change(f, _):
        f["modules/loop"] = h5py.SoftLink("/modules/loop")

    _refused(_changed(good, tmp_path, change), "soft link")


@pytest.mark.parametrize("attr, value, match", [
    ("lorascope_format", np.array([1, 1]), "array of shape"),
    ("lorascope_format", "one", "not an integer"),
    ("config", json.dumps([1, 2]), "JSON list, not a JSON dict"),
    ("config", "[" * 100_000 + "]" * 100_000, "not valid JSON|nested deeper"),
    ("config", "{" * 0 + '{"a":' * 80 + "1" + "}" * 80, "nested deeper"),
    ("config", "not json", "not valid JSON"),
    ("writer_pid", np.int64(2**62), "not between"),
    ("writer_pid", -5, "not between"),
    ("writer_pid", np.float64(3.5), "not an integer"),
    ("status", "exploded", "none of"),
    ("run_name", np.arange(3), "array of shape"),
])
def test_a_root_attribute_of_the_wrong_kind_is_a_sentence(good, tmp_path, attr, value, match):
    def change(f, _):
        f.attrs[attr] = value

    _refused(_changed(good, tmp_path, change), match)


@pytest.mark.parametrize("what, change, match", [
    ("strings where A belongs", lambda f: (f.__delitem__(A), f.create_dataset(A, data=np.array([b"x"] * 4))), "holds"),
    ("a scalar where A belongs", lambda f: (f.__delitem__(A), f.create_dataset(A, data=1.5)), "dimension"),
    ("A of another shape", lambda f: (f.__delitem__(A), f.create_dataset(A, data=np.zeros((4, 3, 8), "f4"))), "per snapshot"),
    ("an index longer than A", lambda f: (f.__delitem__(A), f.create_dataset(A, data=np.zeros((2, 2, 8), "f4"))), "rows but its index counts"),
    ("no /scalars", lambda f: f.__delitem__("scalars"), "no /scalars"),
    ("no /snapshots/time", lambda f: f.__delitem__("snapshots/time"), "no /snapshots/time"),
    ("a group where a dataset belongs", lambda f: (f.__delitem__("snapshots/step"), f.create_group("snapshots/step")), "not a dataset"),
    ("a forged rank", lambda f: f[f"modules/{MODULES[0]}"].attrs.__setitem__("rank", 2**40), "beyond any LoRA"),
    ("a module index out of range", lambda f: f[f"modules/{MODULES[0]}"].attrs.__setitem__("index", 9), "not between"),
    ("a module order naming a missing module", lambda f: f["modules"].attrs.__setitem__("order", json.dumps(["ghost"])), "no /modules/ghost"),
    ("bf16 bits without their encoding", lambda f: (f.__delitem__(A), f.create_dataset(A, data=np.zeros((4, 2, 8), "u2"))), "encoding"),
    ("scalars/other rows beyond its data", lambda f: f["scalars/other"].attrs.__setitem__("rows", 99), "rows but its index counts"),
])
def test_a_malformed_layout_is_a_sentence(good, tmp_path, what, change, match):
    _refused(_changed(good, tmp_path, lambda f, _: change(f)), match)


@pytest.mark.parametrize("size", [0, 8, 11, 20, 35, 47, 48, 100, 4096])
def test_a_file_cut_short_is_damaged_at_once(good, tmp_path, size):
    path = tmp_path / "cut.h5"
    path.write_bytes(good.read_bytes()[:size])
    started = time.monotonic()
    with pytest.raises(RecordingError):
        lorascope.open(path)
    # bounded, not timed: before the fix these waited out HDF5's retries for minutes
    assert time.monotonic() - started < 60


def test_a_live_file_cut_short_is_damaged_at_once(tmp_path):
    live = write_recording(tmp_path / "live.h5", live=True)
    data = (tmp_path / "live.h5").read_bytes()
    live.close("complete")
    for size in (11, 35, 48, len(data) // 2):
        path = tmp_path / f"live-{size}.h5"
        path.write_bytes(data[:size])
        with pytest.raises(RecordingError, match="damaged or truncated"):
            lorascope.open(path)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "x.h5"
    os.mkfifo(fifo)
    with pytest.raises(RecordingError, match="not a regular file"):
        lorascope.open(fifo)


def test_a_folder_and_a_missing_file_are_sentences(tmp_path):
    with pytest.raises(RecordingError, match="is a folder"):
        lorascope.open(tmp_path)
    with pytest.raises(RecordingError, match="no recording at"):
        lorascope.open(tmp_path / "nothing.h5")


def _with_magnitude(length: int, keep_w0: bool = True):
    def change(f, _):
        group = f[f"modules/{MODULES[0]}"]
        group.create_dataset("magnitude", data=np.ones((4, length), "f4"))
        group.attrs["magnitude_norm"] = "row"
        if not keep_w0:
            del group["W0"]
    return change


def test_a_dora_magnitude_of_the_wrong_length_or_without_w0_is_a_sentence(good, tmp_path):
    ok = _changed(good, tmp_path, _with_magnitude(6), "dora.h5")  # one norm per row of (6, 8)
    with lorascope.open(ok) as rec:
        assert rec.modules[MODULES[0]].dora
    _refused(_changed(good, tmp_path, _with_magnitude(8), "long.h5"), "per snapshot")
    _refused(_changed(good, tmp_path, _with_magnitude(6, keep_w0=False), "now0.h5"), "no W0")


@pytest.mark.parametrize("attr, value, match", [
    ("peft", json.dumps([1]), "JSON list, not a JSON dict"),
    ("not_recorded", json.dumps({"a": 1}), "JSON dict, not a JSON list"),
])
def test_the_peft_attributes_are_checked(good, tmp_path, attr, value, match):
    def change(f, _):
        f.attrs[attr] = value

    _refused(_changed(good, tmp_path, change), match)
