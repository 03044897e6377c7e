"""Which scalar columns are metrics: a Hugging Face Trainer that evaluates logs its own timing,
throughput, epoch and FLOPs beside the metrics; `overview.eval_columns` is the one definition the
report's figures, the runs table and the seed summary read, and it keeps only the metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lorascope
from lorascope.analysis.overview import eval_columns, is_bookkeeping, runs_table
from lorascope.config import RecordConfig

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.ids = torch.randint(0, 128, (n, 12), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.fixture(scope="module")
def hf_recording(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lorascope.record import LorascopeCallback

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=128))
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                                       fan_in_fan_out=True))
    folder = tmp_path_factory.mktemp("hf_metrics")
    path = folder / "hf.h5"
    args = transformers.TrainingArguments(
        output_dir=str(folder / "out"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2,
        logging_steps=1, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4,
        save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(8, 0),
                                   eval_dataset=_Tokens(8, 1),
                                   callbacks=[LorascopeCallback(path, RecordConfig(every=2))])
    trainer.train()
    return path


def test_an_hf_recordings_metrics_are_its_eval_loss_only(hf_recording):
    with lorascope.open(hf_recording) as rec:
        columns = rec.scalar_columns
        # the Trainer logged its bookkeeping: the rule is tested on the columns it really writes
        logged = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch",
                  "train_runtime", "total_flos"}
        assert logged <= set(columns)
        assert eval_columns(columns) == ["eval_loss"]
        assert np.isfinite(columns["eval_loss"]).sum() == 2  # steps 2 and 4
        rows = runs_table([rec]).index.tolist()
        assert "final eval_loss" in rows
        assert not [r for r in rows if "runtime" in r or "per_second" in r]


@pytest.mark.parametrize("column", ["eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                                    "epoch", "total_flos", "train_runtime", "train_samples_per_second"])
def test_bookkeeping_columns(column):
    assert is_bookkeeping(column)


@pytest.mark.parametrize("column", ["eval_loss", "eval_accuracy", "eval_f1", "loss", "lr", "grad_norm"])
def test_metric_columns_are_not_bookkeeping(column):
    assert not is_bookkeeping(column)
