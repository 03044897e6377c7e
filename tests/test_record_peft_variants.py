"""Every PEFT LoRA layer type, trained for three steps with the Hugging Face Trainer callback and
with the README's plain-loop Recorder, is recorded, and the file alone reproduces PEFT's own ΔW
to 1e-5 relative (see peft_cases for the references)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lorascope
from lorascope.config import RecordConfig
from lorascope.lora.pairs import NotRecordedWarning
from tests import peft_cases
from tests.peft_cases import CASES, QUANTISED, VOCAB, _Items

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

STEPS = 3


def _needs(name: str) -> None:
    if name in QUANTISED:
        pytest.importorskip("bitsandbytes")


def _lora_layers(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)
            and any(a in m.r for a in m.active_adapters)]


def _plain_loop(case, path, config: RecordConfig | None = None):
    """The README's "Recording from your own loop", with the case's model and data (W0 recorded
    unless `config` says otherwise)."""
    from lorascope.record import Recorder

    model = case.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    config = config or RecordConfig(every=1, base_weights=True)
    with Recorder(path, model, config, total_steps=STEPS) as rec:
        rec.start(optimizer)
        for step in range(1, STEPS + 1):
            out = model(**case.batch(step))
            loss = out["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.on_optimizer_step(step, {"loss": loss.item()})


def _trainer(case, path, tmp_path):
    from lorascope.record import LorascopeCallback

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=2,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=0.0,
    )
    callback = LorascopeCallback(path, RecordConfig(every=1, base_weights=True))
    trainer = transformers.Trainer(model=case.model, args=args, train_dataset=_Items(case.batch, 2 * STEPS),
                                   callbacks=[callback])
    trainer.train()


RECORDERS = {"plain_loop": lambda case, path, tmp_path: _plain_loop(case, path), "trainer": _trainer}


@pytest.mark.parametrize("recorder", list(RECORDERS))
@pytest.mark.parametrize("case_name", list(CASES))
def test_recorded_delta_w_is_peft_delta_w(case_name, recorder, tmp_path):
    _needs(case_name)
    case = CASES[case_name]()
    names = _lora_layers(case.model)
    path = tmp_path / f"{case_name}.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotRecordedWarning)  # nothing left out
        RECORDERS[recorder](case, path, tmp_path)
    reference = peft_cases.peft_deltas(case.model, names, case.quantised)
    with lorascope.open(path) as rec:
        assert rec.status == "complete" and rec.steps.tolist() == list(range(STEPS + 1))
        assert list(rec.modules) == names and rec.not_recorded == []
        for name in names:
            m = rec.modules[name]
            delta = m.delta_w(-1)
            assert delta.shape == reference[name].shape
            assert np.abs(reference[name]).max() > 1e-4  # training moved it
            assert peft_cases.relative_error(delta, reference[name]) < 1e-5, name
            if case.quantised:
                layer = case.model.get_submodule(name)
                assert peft_cases.output_difference_error(layer, delta) < 1e-5, name


def test_dora_stores_magnitude_and_w0_and_is_format_v2(tmp_path):
    case = CASES["dora"]()
    path = tmp_path / "dora.h5"
    model = case.model
    _plain_loop(case, path, RecordConfig(every=1))  # base_weights off: DoRA keeps W0 anyway
    with lorascope.open(path) as rec:
        assert rec.format_version == 2
        q = rec.modules["base_model.model.model.layers.0.self_attn.q_proj"]
        layer = model.get_submodule(q.name)
        assert q.dora and q.magnitude_norm == "row" and q.magnitude.shape == (STEPS + 1, 64)
        np.testing.assert_array_equal(q.magnitude[-1], layer.lora_magnitude_vector["default"].weight.detach().numpy())
        np.testing.assert_array_equal(q.W0, layer.get_base_layer().weight.detach().numpy())
        # PEFT starts the magnitude at ‖W0‖ per row: no change before training
        assert np.abs(q.delta_w(0)).max() < 1e-6
        emb = rec.modules["base_model.model.model.embed_tokens"]
        assert emb.magnitude_norm == "column" and emb.magnitude.shape == (STEPS + 1, 64)
        # ΔW is not the low-rank term alone
        assert peft_cases.relative_error(q.lora_delta(-1), q.delta_w(-1).astype(np.float64)) > 1e-2
        # what `lorascope info` shows of it: the PEFT setup and which modules are DoRA
        from lorascope.analysis import describe

        shown = describe(rec, health=False)
    assert "peft       active adapter(s) default" in shown and "use_dora=True" in shown
    assert f"r={case.model.peft_config['default'].r}" in shown
    q_line = next(line for line in shown.splitlines() if line.strip().startswith(q.name))
    assert "DoRA (magnitude recorded)" in q_line and "peft.Linear" in q_line


def test_quantised_w0_is_the_dequantised_base_weight(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    case = CASES["qlora_nf4"]()
    path = tmp_path / "q.h5"
    _plain_loop(case, path)
    with lorascope.open(path) as rec:
        for name, m in rec.modules.items():
            weight = case.model.get_submodule(name).get_base_layer().weight
            expected = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float().numpy()
            np.testing.assert_array_equal(m.W0, expected)
            assert m.kind == "peft.bnb.Linear4bit" and m.W0.shape == (64, 64)


def test_embedding_lora_is_recorded_in_the_embedding_shape(tmp_path):
    case = CASES["embedding"]()
    path = tmp_path / "emb.h5"
    _plain_loop(case, path)
    layer = case.model.get_submodule("base_model.model.model.embed_tokens")
    with lorascope.open(path) as rec:
        m = rec.modules["base_model.model.model.embed_tokens"]
        assert m.kind == "peft.Embedding" and (m.out_features, m.in_features) == (VOCAB, 64)
        assert m.A.shape[1:] == (4, 64) and m.B.shape[1:] == (VOCAB, 4)
        np.testing.assert_array_equal(m.A[-1], layer.lora_embedding_B["default"].detach().numpy().T)
        np.testing.assert_array_equal(m.B[-1], layer.lora_embedding_A["default"].detach().numpy().T)
        assert not np.any(m.B[0]) and np.any(m.A[0])  # PEFT zeroes lora_embedding_A: B here, as for Linear
        assert m.W0.shape == m.delta_w(-1).shape == (VOCAB, 64)


def test_two_adapters_record_only_the_active_one(tmp_path):
    case = CASES["two_adapters"]()
    path = tmp_path / "two.h5"
    _plain_loop(case, path)
    with lorascope.open(path) as rec:
        assert {m.adapter for m in rec.modules.values()} == {"second"}
        assert {m.rank for m in rec.modules.values()} == {2}
        assert all(n.endswith(("v_proj", "o_proj")) for n in rec.modules)
        assert rec.peft["active_adapters"] == ["second"]
        assert rec.peft["adapters"]["default"]["r"] == 4 and rec.peft["adapters"]["second"]["r"] == 2



@pytest.mark.parametrize("case_name", ["embedding", "conv2d"])
def test_gradients_and_optimizer_state_are_recorded_as_their_matrices(case_name, tmp_path):
    from lorascope.record import Recorder

    case = CASES[case_name]()
    model = case.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    path = tmp_path / "g.h5"
    grads = {}
    with Recorder(path, model, RecordConfig(every=1, grads=True, optimizer_state=True)) as rec:
        rec.start(optimizer)
        pairs = rec.modules
        for step in range(1, STEPS + 1):
            model(**case.batch(step))["loss"].backward()
            rec.on_micro_step(step)
            grads = {n: [p.as_matrix(t.grad.clone()) for t in (p.A, p.B)] for n, p in pairs.items()}
            optimizer.step()
            optimizer.zero_grad()
            rec.on_optimizer_step(step, {})
    with lorascope.open(path) as r:
        for name, pair in pairs.items():
            m = r.modules[name]
            np.testing.assert_array_equal(m.grad_A[-1], grads[name][0].numpy())
            np.testing.assert_array_equal(m.grad_B[-1], grads[name][1].numpy())
            for key in ("exp_avg", "exp_avg_sq"):
                assert m.state_A[key].shape[1:] == (m.rank, m.in_features)
                np.testing.assert_array_equal(m.state_B[key][-1], pair.as_matrix(optimizer.state[pair.B][key]).numpy())


def test_format_doc_plain_h5py_example_reads_dora(tmp_path):
    """docs/format.md's "Reading with plain h5py" gives the ΔW lorascope.open gives, DoRA included."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs/format.md").read_text()
    body = text.split("## Reading with plain h5py\n", 1)[1]
    (example,) = re.findall(r"```python\n(.*?)```", body.split("\n## ", 1)[0], flags=re.S)
    case = CASES["dora"]()
    path = tmp_path / "dora.h5"
    _plain_loop(case, path)
    # the last module is a Linear (row norms), the first the embedding (column norms)
    scopes: dict[int, dict] = {-1: {}, 0: {}}
    for index, scope in scopes.items():
        code = example.replace("recordings/run.h5", str(path)).replace("order[-1]", f"order[{index}]")
        exec(compile(code, "docs/format.md", "exec"), scope)
    with lorascope.open(path) as rec:
        for index, scope in scopes.items():
            module = rec.modules[list(rec.modules)[index]]
            assert module.dora
            np.testing.assert_allclose(scope["dW_last"], module.delta_w(-1), rtol=0, atol=1e-7)
        np.testing.assert_array_equal(scopes[0]["loss"], rec.scalars["loss"].to_numpy())


def test_size_estimate_counts_dora_magnitudes_and_w0(tmp_path):
    from lorascope.record import Recorder

    case = CASES["dora"]()
    model = case.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    path = tmp_path / "dora.h5"
    with Recorder(path, model, RecordConfig(every=1), total_steps=STEPS) as rec:
        estimate = rec.size_estimate()
        rec.start(optimizer)
        for step in range(1, STEPS + 1):
            model(**case.batch(step))["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.on_optimizer_step(step, {})
    with lorascope.open(path) as r:
        stored = sum(m.A[:].nbytes + m.B[:].nbytes + m.magnitude[:].nbytes + m.W0.nbytes
                     for m in r.modules.values())
    assert estimate.bytes_per_snapshot * (STEPS + 1) + sum(
        m.in_features * m.out_features * 4 for m in rec.modules.values()) <= estimate.total_bytes
    assert stored <= estimate.total_bytes < stored + STEPS * 1024


def test_a_resumed_dora_recording_keeps_one_magnitude_row_per_snapshot(tmp_path):
    from lorascope.record import Recorder

    case = CASES["dora"]()
    model = case.model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-1)
    path = tmp_path / "resume.h5"
    magnitudes = {}

    def run(rec, steps):
        for step in steps:
            model(**case.batch(step))["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
            rec.on_optimizer_step(step, {})
            magnitudes[step] = {n: p.magnitude.detach().clone().numpy() for n, p in rec.modules.items()}

    rec = Recorder(path, model, RecordConfig(every=1))
    rec.start(optimizer)
    run(rec, [1, 2, 3])
    rec.close("interrupted")
    # the checkpoint was taken at step 2: step 3 is recorded again
    rec = Recorder(path, model, RecordConfig(every=1), resume=True)
    rec.start(optimizer, step=2)
    run(rec, [3, 4])
    rec.close()
    with lorascope.open(path) as r:
        assert r.steps.tolist() == [0, 1, 2, 3, 4] and r.format_version == 2
        for name, m in r.modules.items():
            assert m.magnitude.shape[0] == 5
            for t, step in enumerate(r.steps[1:], start=1):
                np.testing.assert_array_equal(m.magnitude[t], magnitudes[int(step)][name])
