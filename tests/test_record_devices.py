"""The Recorder's device paths against their plain host counterparts, on CPU and CUDA (the CUDA
cases are marked `gpu`): the capture into pinned host buffers on a side stream must equal a
synchronous copy bit for bit, even when the training stream overwrites the weights right after;
the device-side update norms must equal the host-side ones and float64 norms of the stored
snapshots."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from lorascope.config import RecordConfig
from lorascope.record import Recorder
from lorascope.record.capture import TORCH_DTYPES, Channel
from lorascope.train.amp import resolve_precision
from lorascope.train.loop import train_loop
from tests.amp_helpers import DEVICES, lm_batches, lora_model

# LoRA-shaped matrices and one of 4 MiB, so that a copy still in flight when the training stream
# writes the weights again would be caught
SHAPES = [(16, 768), (2304, 16), (16, 3072), (768, 16), (1024, 1024)]


def _tensors(device: str, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device) for shape in SHAPES]


def _ready(event) -> None:
    if event is not None:  # CPU: the copy was synchronous
        event.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_capture_equals_a_synchronous_copy_bit_for_bit(device, dtype):
    tensors = _tensors(device)
    expected = [t.to("cpu").to(TORCH_DTYPES[dtype], copy=True) for t in tensors]  # synchronous, rounded on the host
    channel = Channel(SHAPES, TORCH_DTYPES[dtype], torch.device(device), slots=2)
    slot, event = channel.capture(tensors, lambda: True)
    torch._foreach_add_(tensors, 1.0)  # the next optimizer step, queued on the training stream at once
    _ready(event)
    assert slot.tensor.is_pinned() == (device == "cuda")
    for got, want in zip(slot.views, expected):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_consecutive_captures_keep_their_own_values(device):
    """The staging buffer is reused by the next capture only after the previous host copy read it."""
    tensors = _tensors(device)
    first = [t.to("cpu", copy=True) for t in tensors]
    channel = Channel(SHAPES, torch.float32, torch.device(device), slots=2)
    slot1, event1 = channel.capture(tensors, lambda: True)
    torch._foreach_mul_(tensors, -3.0)
    second = [t.to("cpu", copy=True) for t in tensors]
    slot2, event2 = channel.capture(tensors, lambda: True)
    torch._foreach_add_(tensors, 7.0)
    _ready(event1)
    _ready(event2)
    assert slot1.index != slot2.index
    assert all(torch.equal(g, w) for g, w in zip(slot1.views, first))
    assert all(torch.equal(g, w) for g, w in zip(slot2.views, second))


class _Both:
    """Passes the loop's hook calls to two recorders of the same model."""

    def __init__(self, *recorders):
        self.recorders = recorders

    def on_micro_step(self, micro_step, loss_scale=1.0):
        for rec in self.recorders:
            rec.on_micro_step(micro_step, loss_scale)

    def on_optimizer_step(self, step, scalars, optimizer=None):
        for rec in self.recorders:
            rec.on_optimizer_step(step, scalars, optimizer)

    def log_eval(self, step, metrics):
        pass


@pytest.mark.parametrize("device", DEVICES)
def test_device_update_norms_equal_the_host_ones(tmp_path, device):
    steps = 4
    model = lora_model(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    paths = {place: tmp_path / f"{place}.h5" for place in ("host", "device")}
    recorders = [Recorder(paths[place], model, RecordConfig(every=1), update_norms=place) for place in paths]
    for rec in recorders:
        rec.start(optimizer)
    train_loop(model=model, optimizer=optimizer, scheduler=None, train_data=lm_batches(steps),
               device=torch.device(device), precision=resolve_precision("off", torch.device(device)),
               total_steps=steps, hooks=_Both(*recorders))
    for rec in recorders:
        rec.close()
    rows = {}
    for place, path in paths.items():
        with h5py.File(path, "r") as f:
            assert f["updates/step"][:].tolist() == list(range(1, steps + 1))
            rows[place] = f["updates/norms"][:]  # (steps, modules, 4): dA, dB, A, B
            if place == "host":
                order = list(f["modules"])
                snapshots = {name: (f["modules"][name]["A"][:].astype(np.float64),
                                    f["modules"][name]["B"][:].astype(np.float64)) for name in order}
                index = {name: int(f["modules"][name].attrs["index"]) for name in order}
    np.testing.assert_allclose(rows["device"], rows["host"], rtol=1e-5, atol=1e-7)
    for name, (A, B) in snapshots.items():  # the float32 snapshots of every step, in float64
        expected = np.stack([np.linalg.norm(A[1:] - A[:-1], axis=(1, 2)), np.linalg.norm(B[1:] - B[:-1], axis=(1, 2)),
                             np.linalg.norm(A[1:], axis=(1, 2)), np.linalg.norm(B[1:], axis=(1, 2))], axis=1)
        for place in rows:
            np.testing.assert_allclose(rows[place][:, index[name]], expected, rtol=1e-5, err_msg=f"{place} {name}")
