"""The per-step update norms: known values for both computing paths, and the same /updates rows
whichever path computed them, whatever the schedule, storage dtype or resume point."""
from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch

from lorascope.config import RecordConfig
from lorascope.errors import UsageError
from lorascope.record import Recorder
from lorascope.record.capture import FlatLayout
from lorascope.lora.pairs import find_lora_pairs
from lorascope.record.updates import DeviceUpdateNorms, HostUpdateNorms, NormsOnDevice, NormsOnHost, norm_place
from tests.record_helpers import lora_params, tiny_lora_gpt2, train


def _flat(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    layout = FlatLayout(tuple(tuple(t.shape) for t in tensors))
    flat = torch.cat([t.reshape(-1) for t in tensors]).float()
    return flat, layout.views(flat)


# One pair: A (1, 2), B (2, 1). Step: A (0, 0) → (3, 4), B (1, 0) → (1, 2); so ‖ΔA‖ = 5,
# ‖ΔB‖ = 2, ‖A‖ = 5, ‖B‖ = √5.
BEFORE = [torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0], [0.0]])]
AFTER = [torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0], [2.0]])]
EXPECTED = np.array([[5.0, 2.0, 5.0, np.sqrt(5.0)]], dtype=np.float32)


def test_host_norms_known_values_and_the_next_step_starts_from_the_last():
    norms = HostUpdateNorms()
    norms.baseline(*_flat(BEFORE))
    np.testing.assert_allclose(norms.update(*_flat(AFTER)), EXPECTED, rtol=1e-6)
    # a step that changes nothing: zero update, same weight norms
    np.testing.assert_allclose(norms.update(*_flat(AFTER)), [[0.0, 0.0, 5.0, np.sqrt(5.0)]], rtol=1e-6)


def test_host_norms_refuse_an_update_without_a_baseline():
    with pytest.raises(RuntimeError, match="baseline"):
        HostUpdateNorms().update(*_flat(AFTER))


def test_device_norms_known_values():
    params = [t.clone() for t in BEFORE]
    norms = DeviceUpdateNorms(params)
    for p, new in zip(params, AFTER):
        p.copy_(new)
    np.testing.assert_allclose(norms.update(params).numpy(), EXPECTED, rtol=1e-6)


def _record(tmp_path, name: str, model, config: RecordConfig, place: str, steps: int = 5):
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(lora_params(model), lr=1e-2)
    path = tmp_path / f"{name}-{place}.h5"
    after = {}
    with Recorder(path, model, config, update_norms=place) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=steps,
              on_weights=lambda s: after.__setitem__(s, [t.detach().clone() for t in lora_params(model)]))
    with h5py.File(path, "r") as f:
        first = f["modules"][next(iter(find_lora_pairs(model)))]
        stored = (first["A"][:], first["B"][:])
        return f["updates/step"][:], f["updates/norms"][:], after, stored


@pytest.mark.parametrize("config", [
    RecordConfig(every=1),                    # every step's snapshot carries the norms
    RecordConfig(every=3),                    # most steps send an unstored float32 copy instead
    RecordConfig(every=2, dtype="float16"),   # host: the writer rounds the float32 snapshot
    RecordConfig(every=1, dtype="bfloat16", optimizer_state=True),  # the file opens after step 1
], ids=["every1", "every3", "fp16", "bf16-state"])
def test_host_and_device_paths_write_the_same_rows(tmp_path, config):
    model = tiny_lora_gpt2()
    before = [t.detach().clone() for t in lora_params(model)]
    steps_h, host, after, stored_h = _record(tmp_path, "run", model, config, "host")
    steps_d, device, _, stored_d = _record(tmp_path, "run", model, config, "device")
    assert steps_h.tolist() == steps_d.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(host, device, rtol=1e-6)
    # the snapshots too, bit for bit: rounding on the writer thread is the same rounding
    for h, d in zip(stored_h, stored_d):
        np.testing.assert_array_equal(h, d)
    # and both are the truth: step 2's update of the first pair, from the weights themselves
    prev, new = after[1], after[2]
    pairs = list(find_lora_pairs(model))
    assert len(pairs) == host.shape[1]
    expected = [torch.linalg.norm(new[0] - prev[0]), torch.linalg.norm(new[1] - prev[1]),
                torch.linalg.norm(new[0]), torch.linalg.norm(new[1])]
    np.testing.assert_allclose(host[1, 0], [float(e) for e in expected], rtol=1e-5)
    expected_first = torch.linalg.norm(after[1][0] - before[0])
    assert host[0, 0, 0] == pytest.approx(float(expected_first), rel=1e-5)


def test_resume_without_a_new_snapshot_still_has_a_baseline(tmp_path):
    model = tiny_lora_gpt2()
    opt = torch.optim.SGD(lora_params(model), lr=1e-2)
    path = tmp_path / "resume.h5"
    rec = Recorder(path, model, RecordConfig(every=1), total_steps=6)
    rec.start(opt)
    train(model, opt, rec, steps=3)
    rec.close("interrupted")
    at_three = [t.detach().clone() for t in lora_params(model)]
    # step 3 is already snapshotted: the resumed Recorder takes none and must send a baseline
    rec = Recorder(path, model, RecordConfig(every=1), total_steps=6, resume=True)
    rec.start(opt, step=3)
    train(model, opt, rec, steps=1, first=4)
    rec.close()
    with h5py.File(path, "r") as f:
        assert f["updates/step"][:].tolist() == [1, 2, 3, 4]
        got = f["updates/norms"][3, 0, 0]
    assert got == pytest.approx(float(torch.linalg.norm(lora_params(model)[0].detach() - at_three[0])), rel=1e-5)


def test_an_unknown_place_is_refused_with_the_choices(tmp_path):
    with pytest.raises(UsageError, match="auto, host, device"):
        Recorder(tmp_path / "x.h5", tiny_lora_gpt2(), RecordConfig(), update_norms="gpu")


def test_auto_place_follows_the_device_and_sets_the_copy_dtype():
    assert isinstance(norm_place("auto", torch.device("cpu")), NormsOnHost)
    assert isinstance(norm_place("auto", torch.device("cuda", 0)), NormsOnDevice)  # nothing touches the GPU yet
    # host: one float32 copy serves the snapshot and the norms; device: copies in the storage dtype
    assert norm_place("host", torch.device("cpu")).weights_dtype(torch.bfloat16) == torch.float32
    assert norm_place("device", torch.device("cpu")).weights_dtype(torch.bfloat16) == torch.bfloat16
