"""A PEFT LoRA GPT-2 trained by transformers.Trainer, recorded by LorascopeCallback, read back."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lorascope
from lorascope.config import RecordConfig

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 128, (n, 12), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_trainer_run_is_recorded_end_to_end(tiny_gpt2, tmp_path):
    from lorascope.record import LorascopeCallback

    model = peft.get_peft_model(tiny_gpt2.train(), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    path = tmp_path / "hf.h5"
    callback = LorascopeCallback(path, RecordConfig(every=1, grads=True))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(16), callbacks=[callback])
    trainer.train()

    final = {n: (m.lora_A["default"].weight.detach().numpy(), m.lora_B["default"].weight.detach().numpy())
             for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.Linear)}
    with lorascope.open(path) as rec:
        assert rec.status == "complete"
        assert rec.steps.tolist() == [0, 1, 2, 3, 4]
        assert rec.micro_steps.tolist() == [-1, 2, 4, 6, 8]
        assert len(rec.modules) == 4
        for name, (A, B) in final.items():
            m = rec.modules[name]
            np.testing.assert_array_equal(m.A[-1], A)
            np.testing.assert_array_equal(m.B[-1], B)
            assert m.kind == "peft.Linear" and m.scaling == pytest.approx(2.0)
            assert not np.any(m.B[0]) and np.any(m.B[-1])  # PEFT's B starts at zero
        # one gradient per optimizer step (the Trainer's accumulated, clipped gradient)
        assert rec.grad_steps.tolist() == [1, 2, 3, 4]
        s = rec.scalars
        assert s["step"].tolist() == [1, 2, 3, 4]
        assert np.isfinite(s["loss"]).all() and np.isfinite(s["grad_norm"]).all()
        assert s["lr"].notna().all()


def test_an_fp16_trainer_step_records_its_loss_scale_skips_and_true_gradients(tmp_path):
    """Under fp16 the Trainer hands the callbacks accelerate's AcceleratedOptimizer holding a
    GradScaler (on a GPU; on CPU the Trainer uses none, so the calls the Trainer makes are made
    here with a real AcceleratedOptimizer and torch's CPU GradScaler). Without clipping the
    gradients are still scaled at on_pre_optimizer_step: the recorded gradient is the true one;
    an overflow step is recorded as skipped, with the halved scale."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from lorascope.record import LorascopeCallback
    from tests.record_helpers import batch, tiny_lora_gpt2

    model = tiny_lora_gpt2()
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = AcceleratedOptimizer(torch.optim.SGD(params, lr=1e-2), scaler=scaler)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, report_to=[],
                                          use_cpu=True, gradient_accumulation_steps=1)
    Accelerator(cpu=True)  # AcceleratedOptimizer reads the accelerator's state (TrainingArguments reset it)
    state, control = transformers.TrainerState(max_steps=2), transformers.TrainerControl()
    path = tmp_path / "fp16.h5"
    callback = LorascopeCallback(path, RecordConfig(every=1, grads=True))
    callback.on_train_begin(args, state, control, model=model, optimizer=optimizer)
    true_grads = []
    for step in (1, 2):
        x = batch(step)
        loss = model(input_ids=x, labels=x).loss
        if step == 2:
            loss = loss * float("inf")  # an overflow: the scaler skips this step
        scaler.scale(loss).backward()
        true_grads.append([p.grad.detach().clone() / 1024.0 for p in params])
        callback.on_pre_optimizer_step(args, state, control, optimizer=optimizer)
        optimizer.step()
        callback.on_optimizer_step(args, state, control, optimizer=optimizer)
        optimizer.zero_grad()
        state.global_step = step
        callback.on_step_end(args, state, control, optimizer=optimizer)
    callback.on_train_end(args, state, control)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # as later Trainers expect to find it
    with lorascope.open(path) as rec:
        scalars = rec.scalars
        assert scalars["skipped"].tolist() == [0.0, 1.0]
        assert scalars["loss_scale"].tolist() == [1024.0, 512.0]
        first = next(iter(rec.modules.values()))
        name = first.name
        recorded = first.grad_B[0]
    from lorascope.lora.pairs import lora_pairs

    B = lora_pairs(model)[name].B
    index = next(i for i, p in enumerate(params) if p is B)
    np.testing.assert_allclose(recorded, true_grads[0][index].numpy(), rtol=1e-5, atol=1e-8)


def test_the_eval_set_size_is_recorded_only_where_the_trainer_log_has_it(tmp_path):
    from lorascope.record import LorascopeCallback

    logged: list[dict] = []
    callback = LorascopeCallback(tmp_path / "hf.h5")
    callback.recorder = SimpleNamespace(log_scalars=lambda step, values: logged.append(values))
    state = SimpleNamespace(global_step=3)
    # what Trainer.evaluate logs: a rate of examples per second, no count
    callback.on_log(None, state, None, logs={"eval_loss": 0.5, "eval_runtime": 0.25, "eval_samples_per_second": 1024.0})
    # what the transformers example scripts add: the eval set's size
    callback.on_log(None, state, None, logs={"eval_loss": 0.5, "eval_samples": 256})
    assert "eval_examples" not in logged[0]
    assert logged[1] == {"eval_loss": 0.5, "eval_examples": 256.0}
