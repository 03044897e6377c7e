"""The Recorder against known answers: what is captured is what is read back, bit for bit."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import lorascope
from lorascope.config import RecordConfig
from lorascope.errors import RecordingError, UsageError
from lorascope.record import Recorder
from lorascope.lora.pairs import find_lora_pairs
from lorascope.record.recorder import NullRecorder
from tests.record_helpers import batch, lora_params, tiny_lora_gpt2, train


def _weights(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {n: (p.A.detach().numpy().copy(), p.B.detach().numpy().copy())
            for n, p in find_lora_pairs(model).items()}


def test_round_trip_is_bit_exact_in_float32(tmp_path):
    model = tiny_lora_gpt2()
    opt = torch.optim.AdamW(lora_params(model), lr=1e-2)
    seen = {0: _weights(model)}
    path = tmp_path / "run.h5"
    with Recorder(path, model, RecordConfig(every=2, flush_every_steps=1)) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=5, on_weights=lambda s: seen.__setitem__(s, _weights(model)))
    with lorascope.open(path) as r:
        # every 2 steps, plus the final weights (step 5) kept at close
        assert r.steps.tolist() == [0, 2, 4, 5]
        assert r.status == "complete"
        assert list(r.modules) == list(seen[0])  # model order
        for t, step in enumerate(r.steps):
            for name, (A, B) in seen[int(step)].items():
                m = r.modules[name]
                assert m.A[t].dtype == np.float32
                np.testing.assert_array_equal(m.A[t], A)
                np.testing.assert_array_equal(m.B[t], B)
        m = r.modules["transformer.h.1.mlp.c_fc"]
        A, B = seen[5]["transformer.h.1.mlp.c_fc"]
        np.testing.assert_allclose(m.delta_w(-1), m.scaling * B @ A, rtol=1e-6)
        assert (m.rank, m.in_features, m.out_features, m.layer_index) == (4, 32, 128, 1)
        assert m.scaling == pytest.approx(2.0) and m.kind == "lorascope.LoRALinear"
        assert r.scalars["step"].tolist() == [1, 2, 3, 4, 5]
        assert np.isfinite(r.scalars["loss"]).all()
        assert r.scalars["lr"].tolist() == [1e-2] * 5


def test_reduced_precision_storage_decodes_to_the_rounded_values(tmp_path):
    model = tiny_lora_gpt2()
    opt = torch.optim.SGD(lora_params(model), lr=1e-2)
    for dtype, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        path = tmp_path / f"{dtype}.h5"
        with Recorder(path, model, RecordConfig(dtype=dtype)) as rec:
            rec.start(opt)
            train(model, opt, rec, steps=1)
        pair = find_lora_pairs(model)["transformer.h.0.attn.c_attn"]
        expected = pair.B.detach().to(torch_dtype).float().numpy()
        with lorascope.open(path) as r:
            got = r.modules["transformer.h.0.attn.c_attn"].B[-1]
            np.testing.assert_array_equal(got.astype(np.float32), expected)
        if dtype == "bfloat16":  # documented plain-h5py decoding: uint16 bits << 16
            with h5py.File(path, "r") as f:
                ds = f["modules/transformer.h.0.attn.c_attn/B"]
                assert ds.dtype == np.uint16 and ds.attrs["encoding"] == "bfloat16-as-uint16"
                plain = (ds[-1].astype(np.uint32) << 16).view(np.float32)
                np.testing.assert_array_equal(plain, expected)


def test_micro_step_gradients_sum_to_the_accumulated_gradient(tmp_path):
    model = tiny_lora_gpt2()
    params = lora_params(model)
    path = tmp_path / "grads.h5"
    scale = 1024.0  # as a GradScaler would: every backward is scaled, the recorder divides
    accumulated = []
    with Recorder(path, model, RecordConfig(grads=True)) as rec:
        rec.start()
        for micro in range(1, 4):
            x = batch(micro)
            (model(input_ids=x, labels=x).loss * scale / 3).backward()
            rec.on_micro_step(micro, loss_scale=scale)
        accumulated = [p.grad.detach().clone() / scale for p in params]
        rec.on_optimizer_step(1, {})
    with lorascope.open(path) as r:
        assert r.grad_steps.tolist() == [1, 1, 1]
        assert r.grad_micro_steps.tolist() == [1, 2, 3]
        pairs = list(find_lora_pairs(model))
        for i, name in enumerate(pairs):
            m = r.modules[name]
            np.testing.assert_allclose(m.grad_A[:].sum(0), accumulated[2 * i].numpy(), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(m.grad_B[:].sum(0), accumulated[2 * i + 1].numpy(), rtol=1e-4, atol=1e-7)
        # each micro gradient is that micro-batch's own: check the first one directly
    model.zero_grad()
    x = batch(1)
    (model(input_ids=x, labels=x).loss / 3).backward()
    with lorascope.open(path) as r:
        np.testing.assert_allclose(r.modules[pairs[0]].grad_B[0], params[1].grad.numpy(), rtol=1e-4, atol=1e-7)


def test_optimizer_state_and_update_norms(tmp_path):
    model = tiny_lora_gpt2()
    opt = torch.optim.AdamW(lora_params(model), lr=1e-2)
    path = tmp_path / "state.h5"
    before = _weights(model)
    after = {}
    with Recorder(path, model, RecordConfig(optimizer_state=True)) as rec:
        rec.start(opt)
        train(model, opt, rec, steps=2, on_weights=lambda s: after.__setitem__(s, _weights(model)))
    name = "transformer.h.0.mlp.c_proj"
    pair = find_lora_pairs(model)[name]
    with lorascope.open(path) as r:
        m = r.modules[name]
        assert r.state_steps.tolist() == [1, 2]
        assert sorted(m.state_A) == ["exp_avg", "exp_avg_sq"]
        np.testing.assert_array_equal(m.state_B["exp_avg_sq"][-1], opt.state[pair.B]["exp_avg_sq"].numpy())
        up = m.updates
        assert up["step"].tolist() == [1, 2]
        A0, B0 = before[name]
        A1, B1 = after[1][name]
        assert up["dA_norm"][0] == pytest.approx(np.linalg.norm(A1 - A0), rel=1e-5)
        assert up["dB_norm"][0] == pytest.approx(np.linalg.norm(B1 - B0), rel=1e-5)
        assert up["B_norm"][0] == pytest.approx(np.linalg.norm(B1), rel=1e-5)
        assert up["dB_ratio"][0] == pytest.approx(np.linalg.norm(B1 - B0) / np.linalg.norm(B1), rel=1e-5)


def test_base_weight_w0_is_stored_as_out_by_in(tmp_path):
    model = tiny_lora_gpt2()
    path = tmp_path / "w0.h5"
    with Recorder(path, model, RecordConfig(base_weights=True)) as rec:
        rec.start()
    pair = find_lora_pairs(model)["transformer.h.0.mlp.c_fc"]
    with lorascope.open(path) as r:
        W0 = r.modules["transformer.h.0.mlp.c_fc"].W0
        assert W0.shape == (128, 32)
        np.testing.assert_array_equal(W0, pair.base_weight().numpy())


def test_scalars_eval_metrics_and_extra_names(tmp_path):
    model = tiny_lora_gpt2()
    path = tmp_path / "scalars.h5"
    with Recorder(path, model) as rec:
        rec.start()
        rec.on_optimizer_step(1, {"loss": 2.0, "grad_norm": 0.5, "clipped": 0, "my_metric": 7.0})
        rec.on_optimizer_step(2, {"loss": 1.5, "skipped": 1})
        rec.log_scalars(2, {"grad_norm": 0.25})  # a trainer's separate log of the same step
        rec.log_eval(2, {"loss": 3.0, "eval_accuracy": 0.5})
    with lorascope.open(path) as r:
        s = r.scalars
        assert s["step"].tolist() == [1, 2]
        assert s["loss"].tolist() == [2.0, 1.5]
        assert s["grad_norm"].tolist() == [0.5, 0.25]
        assert s["my_metric"].iloc[0] == 7.0 and np.isnan(s["my_metric"].iloc[1])
        assert s["eval_loss"].iloc[1] == 3.0 and s["eval_accuracy"].iloc[1] == 0.5
        assert s["skipped"].iloc[1] == 1.0


def test_root_attributes_follow_the_format(tmp_path):
    model = tiny_lora_gpt2()
    path = tmp_path / "attrs.h5"
    with Recorder(path, model, run_name="demo", run_config={"seed": 3}) as rec:
        rec.start()
    with h5py.File(path, "r") as f:
        assert f.attrs["lorascope_format"] == 1
        assert f.attrs["run_name"] == "demo"
        assert json.loads(f.attrs["config"]) == {"seed": 3}
        assert "torch" in json.loads(f.attrs["environment"])
        assert f.attrs["status"] == b"complete"
        g = f["modules/transformer.h.1.attn.c_attn"]
        assert g["A"].chunks == (1, 4, 32) and g["A"].maxshape == (None, 4, 32)
        assert g.attrs["a_trainable"] and g.attrs["rank"] == 4


def test_module_selector_and_estimate(tmp_path):
    model = tiny_lora_gpt2()
    cfg = RecordConfig(every=5, modules="*.attn.*")
    est = Recorder.estimate(model, cfg, total_steps=12)
    # attn c_attn (4x32 + 96x4) and c_proj (4x32 + 32x4) in 2 layers, float32
    assert est.modules == 4
    assert est.bytes_per_snapshot == 2 * (4 * 32 + 96 * 4 + 4 * 32 + 32 * 4) * 4
    assert est.snapshots == 4  # 0, 5, 10 and the final step 12
    with pytest.raises(UsageError, match="matches none"):
        Recorder(tmp_path / "x.h5", model, RecordConfig(modules="nothing.*"))


def test_keyboard_interrupt_closes_with_every_snapshot(tmp_path):
    model = tiny_lora_gpt2()
    opt = torch.optim.SGD(lora_params(model), lr=1e-2)
    path = tmp_path / "ctrl_c.h5"
    with pytest.raises(KeyboardInterrupt):
        with Recorder(path, model, RecordConfig(flush_every_steps=100, flush_every_seconds=0)) as rec:
            rec.start(opt)
            train(model, opt, rec, steps=3)
            raise KeyboardInterrupt
    with lorascope.open(path) as r:
        assert r.status == "interrupted"
        assert r.steps.tolist() == [0, 1, 2, 3]


def test_attach_records_through_the_optimizer_hook_and_removes_it(tmp_path):
    model = tiny_lora_gpt2()
    opt = torch.optim.SGD(lora_params(model), lr=1e-2)
    path = tmp_path / "attach.h5"
    with Recorder(path, model) as rec:
        rec.attach(opt)
        for i in range(2):
            x = batch(i)
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
    assert not opt._optimizer_step_post_hooks  # removed on close
    with lorascope.open(path) as r:
        assert r.steps.tolist() == [0, 1, 2]


def test_resume_continues_without_duplicates(tmp_path):
    model = tiny_lora_gpt2()
    opt = torch.optim.SGD(lora_params(model), lr=1e-2)
    path = tmp_path / "resume.h5"
    rec = Recorder(path, model, RecordConfig(every=1), total_steps=6)
    rec.start(opt)
    train(model, opt, rec, steps=4)
    rec.close("interrupted")
    # the checkpoint was taken at step 3: step 4's rows are dropped and recorded again
    rec = Recorder(path, model, RecordConfig(every=1), total_steps=6, resume=True)
    rec.start(opt, step=3)
    train(model, opt, rec, steps=3, first=4)
    rec.close()
    with lorascope.open(path) as r:
        assert r.steps.tolist() == [0, 1, 2, 3, 4, 5, 6]
        assert r.scalars["step"].tolist() == [1, 2, 3, 4, 5, 6]
        assert r.modules["transformer.h.0.attn.c_attn"].updates["step"].tolist() == [1, 2, 3, 4, 5, 6]
        assert r.status == "complete"
    assert not (tmp_path / "resume.h5.resume-tmp").exists()


def test_other_ranks_get_a_null_recorder(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    rec = Recorder(tmp_path / "r1.h5", tiny_lora_gpt2())
    assert isinstance(rec, NullRecorder)
    with rec:
        rec.start()
        rec.on_micro_step(1)
        rec.on_optimizer_step(1, {"loss": 1.0})
    assert not (tmp_path / "r1.h5").exists()


def test_bad_uses_are_refused_with_sentences(tmp_path):
    model = tiny_lora_gpt2()
    with pytest.raises(UsageError, match="does not exist"):
        Recorder(tmp_path / "missing" / "x.h5", model).start()
    with pytest.raises(UsageError, match="is a folder"):
        Recorder(tmp_path, model).start()
    rec = Recorder(tmp_path / "y.h5", model)
    with pytest.raises(UsageError, match="start"):
        rec.on_optimizer_step(1, {})
    with pytest.raises(UsageError, match="log_spaced"):
        Recorder(tmp_path / "z.h5", model, RecordConfig(log_spaced=10))
    with pytest.raises(UsageError, match="no LoRA modules"):
        Recorder(tmp_path / "w.h5", torch.nn.Linear(3, 3))


def test_a_failing_writer_stops_training_with_a_sentence(tmp_path, monkeypatch):
    from lorascope.h5.file import RecordingFile

    model = tiny_lora_gpt2()
    path = tmp_path / "full.h5"

    def disk_full(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RecordingFile, "write_snapshot", disk_full)
    rec = Recorder(path, model, RecordConfig(queue_size=2))
    rec.start()
    with pytest.raises(RecordingError, match="No space left"):
        for step in range(1, 50):
            rec.on_optimizer_step(step, {"loss": 1.0})
    with pytest.raises(RecordingError):
        rec.close("failed")
    with lorascope.open(path) as r:  # the file stays readable
        assert r.status == "failed"
