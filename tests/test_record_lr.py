"""One learning-rate series per parameter group, holding the lr each update applied: in
lorascope's own loop (which steps its scheduler before the Recorder hears of the step) and under
the Hugging Face Trainer (which does the same before on_step_end)."""
from __future__ import annotations

import pytest
import torch

import lorascope
from lorascope.config import RecordConfig
from lorascope.record import Recorder
from lorascope.train.amp import resolve_precision
from lorascope.train.loop import train_loop
from lorascope.train.optim import current_lrs, lora_param_groups
from tests.record_helpers import batch, tiny_lora_gpt2

STEPS = 4


def _lr_columns(rec) -> list[str]:
    return [c for c in rec.scalars.columns if c == "lr" or c.startswith("lr_")]


def test_lorascope_loop_stores_one_applied_lr_per_group(tmp_path):
    model = tiny_lora_gpt2()
    optimizer = torch.optim.AdamW(lora_param_groups(model, 1e-2, lora_plus_ratio=4.0))
    decay = lambda step: 1.0 - step / STEPS  # noqa: E731 - the lr of update s is decay(s - 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    data = [{"input_ids": batch(i), "labels": batch(i)} for i in range(STEPS)]
    path = tmp_path / "loop.h5"
    with Recorder(path, model, RecordConfig(every=1)) as rec:
        rec.start(optimizer)
        train_loop(model=model, optimizer=optimizer, scheduler=scheduler, train_data=data,
                   device=torch.device("cpu"), precision=resolve_precision("off", torch.device("cpu")),
                   total_steps=STEPS, hooks=rec, lrs=lambda: current_lrs(optimizer, scheduler))
    with lorascope.open(path) as r:
        assert _lr_columns(r) == ["lr", "lr_A", "lr_B"]
        s = r.scalars
        applied = [1e-2 * decay(step - 1) for step in s["step"]]
        assert s["lr_A"].tolist() == pytest.approx(applied)
        assert s["lr"].tolist() == pytest.approx(applied)
        assert s["lr_B"].tolist() == pytest.approx([4 * lr for lr in applied])


def test_trainer_callback_stores_the_applied_lr(tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from lorascope.record import LorascopeCallback
    from tests.peft_cases import _Items, gpt2, token_batch

    model = peft.get_peft_model(gpt2(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                        fan_in_fan_out=True))
    path = tmp_path / "hf.h5"
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=2,
        learning_rate=1e-2, lr_scheduler_type="linear", logging_steps=2, save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Items(token_batch, 2 * STEPS),
                                   callbacks=[LorascopeCallback(path, RecordConfig(every=1))])
    trainer.train()
    with lorascope.open(path) as r:
        s = r.scalars
        # transformers' linear schedule: update s applies lr · (1 − (s − 1) / steps)
        applied = [1e-2 * (1 - (step - 1) / STEPS) for step in s["step"]]
        for column in _lr_columns(r):
            assert s[column].tolist() == pytest.approx(applied), column
