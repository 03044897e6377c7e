"""The reading API: lazy numpy slicing, selection by step, scalars, and a sentence for every
file it cannot read."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import lorascope
from lorascope.config import RecordConfig
from lorascope.errors import RecordingError
from lorascope.record import Recorder
from tests.record_helpers import lora_params, tiny_lora_gpt2, train


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    model = tiny_lora_gpt2()
    opt = torch.optim.SGD(lora_params(model), lr=1e-2)
    path = tmp_path_factory.mktemp("rec") / "run.h5"
    with Recorder(path, model, RecordConfig(every=3, dense_first=2)) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=7)
    return path


def test_lazy_slicing_behaves_like_numpy(recording):
    with lorascope.open(recording) as r:
        m = r.modules["transformer.h.0.mlp.c_fc"]
        full = m.A[:]
        assert full.shape == (len(r.steps), 4, 32) == m.A.shape
        np.testing.assert_array_equal(m.A[-1], full[-1])
        np.testing.assert_array_equal(m.A[::2], full[::2])
        np.testing.assert_array_equal(m.A[::-1], full[::-1])
        np.testing.assert_array_equal(m.A[[3, 0, 3]], full[[3, 0, 3]])
        np.testing.assert_array_equal(m.A[1:3, 0, :5], full[1:3, 0, :5])
        np.testing.assert_array_equal(m.B[np.array([True, False, True, False, False, True])], full_B := m.B[:][[0, 2, 5]])
        assert full_B.shape == (3, 128, 4)
        np.testing.assert_array_equal(np.asarray(m.A), full)
        with pytest.raises(IndexError):
            m.A[len(r.steps)]


def test_steps_and_index_of(recording):
    with lorascope.open(recording) as r:
        assert r.steps.tolist() == [0, 1, 2, 3, 6, 7]
        assert r.index_of(0) == 0
        assert r.index_of(4) == 3  # 3 is nearer than 6
        assert r.index_of(5) == 4
        assert r.index_of(100) == 5
        assert r.micro_steps.tolist() == [-1, 1, 2, 3, 6, 7]
        assert np.all(np.diff(r.times) >= 0)


def test_open_many_and_metadata(recording):
    recs = lorascope.open_many([recording, recording])
    try:
        assert [r.run_name for r in recs] == ["run", "run"]
        assert recs[0].format_version == 1 and recs[0].status == "complete"
    finally:
        for r in recs:
            r.close()
    with pytest.raises(RecordingError, match="no recording"):
        lorascope.open_many([recording, recording.parent / "nope.h5"])


def _error(path) -> str:
    with pytest.raises(RecordingError) as info:
        lorascope.open(path)
    return str(info.value)


def test_missing_file(tmp_path):
    assert "no recording at" in _error(tmp_path / "missing.h5")


def test_folder(tmp_path):
    assert "is a folder" in _error(tmp_path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("just text")
    assert "not an HDF5 file" in _error(path)


def test_truncated_hdf5(recording, tmp_path):
    data = recording.read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: len(data) // 3])
    assert "damaged or truncated" in _error(path)


def test_hdf5_that_is_not_a_recording(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    assert "not a lorascope recording" in _error(path)


def test_newer_format_version(recording, tmp_path):
    path = tmp_path / "future.h5"
    path.write_bytes(recording.read_bytes())
    with h5py.File(path, "r+") as f:
        f.attrs["lorascope_format"] = 99
    message = _error(path)
    assert "format v99" in message and "upgrade lorascope" in message


def test_stale_running_status_reads_as_interrupted(recording, tmp_path):
    import socket

    path = tmp_path / "stale.h5"
    path.write_bytes(recording.read_bytes())
    with h5py.File(path, "r+") as f:
        f.attrs.modify("status", np.bytes_(b"running"))
        f.attrs["writer_host"] = socket.gethostname()
        f.attrs["writer_pid"] = 2**22 + 12345  # above pid_max's default: no such process
    with lorascope.open(path) as r:
        assert r.stored_status == "running" and r.status == "interrupted"


def test_read_into_fills_a_given_array_and_refuses_a_wrong_shape(recording):
    with lorascope.open(recording) as rec:
        m = next(iter(rec.modules.values()))
        out = np.full((len(m.A) - 1, *m.A.shape[1:]), np.nan, dtype=np.float32)
        assert m.A.read_into(out) is out
        np.testing.assert_array_equal(out, m.A[: len(out)])  # the first snapshots, in order
        with pytest.raises(ValueError, match="cannot read"):
            m.A.read_into(np.empty((1, *m.B.shape[1:]), np.float32))
        with pytest.raises(ValueError, match="cannot read"):
            m.A.read_into(np.empty((len(m.A) + 1, *m.A.shape[1:]), np.float32))


def test_reading_keeps_no_chunk_cache(recording):
    # A chunk cache per open dataset (HDF5's default is 8 MiB) grew a process that read every
    # module by ~20 MiB per module; a chunk is one snapshot read whole, so none is kept.
    with lorascope.open(recording) as rec:
        assert rec._f.id.get_access_plist().get_cache()[2] == 0


def _live_copy(tmp_path):
    """The bytes of a recording whose writer is still running (SWMR flags set), after a commit."""
    from lorascope.h5.file import FileLayout, ModuleSpec, RecordingFile
    from lorascope.h5.format import FORMAT_VERSION

    spec = ModuleSpec("m", {"name": "m", "index": 0, "rank": 2, "alpha": 2.0, "scaling": 1.0,
                            "in_features": 8, "out_features": 6, "layer_index": 0}, (2, 8), (6, 2))
    live = RecordingFile(tmp_path / "live.h5", FileLayout({"lorascope_format": FORMAT_VERSION, "run_name": "live"}, [spec]))
    arrays = [np.ones((2, 8), np.float32), np.zeros((6, 2), np.float32)]
    live.write_snapshot(1, 1, 0.0, arrays)
    live.commit()
    data = (tmp_path / "live.h5").read_bytes()
    live.close("complete")
    return data


def test_a_live_file_shorter_than_its_superblock_is_waited_for(tmp_path, monkeypatch):
    # A running writer can name a new end in the superblock before the file reaches it: the
    # reader waits a moment instead of calling a healthy live recording damaged. The file grows
    # during the reader's first real pause (sleep is replaced, so no timing is involved).
    import lorascope.h5.opening as opening

    data = _live_copy(tmp_path)
    path = tmp_path / "copy.h5"
    path.write_bytes(data[:-4096])
    pauses = []

    def writer_catches_up(seconds):
        pauses.append(seconds)
        if seconds > 0:
            path.write_bytes(data)

    monkeypatch.setattr(opening.time, "sleep", writer_catches_up)
    with lorascope.open(path) as rec:
        assert len(rec.steps) == 1
    assert any(p > 0 for p in pauses)


def test_a_live_file_that_stays_short_is_damaged(tmp_path):
    data = _live_copy(tmp_path)
    path = tmp_path / "short.h5"
    path.write_bytes(data[:-4096])
    with pytest.raises(RecordingError, match="damaged or truncated"):
        lorascope.open(path)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reading_snapshots_at_indices_equals_reading_them_one_by_one(tmp_path, monkeypatch, dtype):
    """Indices read in contiguous blocks (gaps read along and dropped), in the order asked, with
    repeats; whatever the storage, and whatever the gap that is read along."""
    import lorascope.h5.reader as reader

    model = tiny_lora_gpt2(seed=2)
    opt = torch.optim.SGD(lora_params(model), lr=1e-2)
    path = tmp_path / f"{dtype}.h5"
    with Recorder(path, model, RecordConfig(dtype=dtype)) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=12)
    asked = [np.array([0, 1, 2, 7, 12]), np.array([12, 3, 3, 0]), np.arange(13)[::4], np.array([5])]
    for gap_bytes in (1, reader._GAP_BYTES):  # every gap a new read / gaps read along
        monkeypatch.setattr(reader, "_GAP_BYTES", gap_bytes)
        with lorascope.open(path) as r:
            for m in r.modules.values():
                for index in asked:
                    for lazy in (m.A, m.B):
                        want = np.stack([lazy[int(i)] for i in index])
                        got = lazy[index]
                        assert got.dtype == want.dtype == lazy.dtype
                        np.testing.assert_array_equal(got, want)


def _pandas_scalars(steps, columns, other):
    """The obvious way: pandas' groupby/last per step, then the (step, name, value) rows pivoted
    and combined, columns with no value dropped, the standard names first."""
    import pandas as pd

    from lorascope.h5.format import STANDARD_SCALARS

    frame = pd.DataFrame({"step": steps, **columns}).groupby("step", sort=True).last()
    if len(other):
        long = pd.DataFrame({"step": other["step"].astype(np.int64),
                             "name": [b.decode() for b in other["name"]], "value": other["value"]})
        wide = long.pivot_table(index="step", columns="name", values="value", aggfunc="last")
        wide.columns.name = None
        frame = frame.combine_first(wide)
    frame.index.name = "step"
    frame = frame.reset_index()
    frame = frame[[c for c in frame.columns if c == "step" or not frame[c].isna().all()]]
    standard = [c for c in STANDARD_SCALARS if c in frame.columns]
    return frame[["step", *standard, *sorted(c for c in frame.columns if c != "step" and c not in standard)]]


def test_scalars_equal_the_pandas_reference_on_random_logs():
    from types import SimpleNamespace

    from lorascope.h5.reader import _read_scalars

    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(0, 12))
        steps = rng.integers(0, 6, n)  # repeated and out-of-order steps: separate logs
        columns = {c: np.where(rng.random(n) < 0.4, np.nan, rng.normal(size=n))
                   for c in ["loss", "lr", "grad_norm"][: rng.integers(0, 4)]}
        m = int(rng.integers(0, 8))
        other = np.zeros(m, dtype=[("step", "<i8"), ("name", "S64"), ("value", "<f8")])
        other["step"] = rng.integers(0, 8, m)
        other["name"] = rng.choice([b"eval_loss", b"eval_accuracy", b"zz"], m)
        other["value"] = np.where(rng.random(m) < 0.3, np.nan, rng.normal(size=m))
        checked = SimpleNamespace(counts={"scalars": n, "other": m}, index={"scalars/step": steps},
                                  scalar_columns=columns, scalar_logged={}, scalars_other=other)
        fast, slow = _read_scalars(checked), _pandas_scalars(steps, columns, other)
        assert list(fast) == list(slow.columns)
        for name, values in fast.items():
            np.testing.assert_array_equal(values.astype(float), slow[name].to_numpy(float))
