"""A PEFT LoRA GPT-2 trained by transformers.Trainer, recorded by LorascopeCallback, read back."""
from __future__ import annotations

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
