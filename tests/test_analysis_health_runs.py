"""Health checks on real little recordings: a tiny GPT-2 (built from a config) with lorascope's
LoRA, trained by a plain loop and recorded by the Recorder, once healthy and once with a failure
planted. Each check fires on its planted run, at the planted step, and the healthy twin is quiet."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lorascope
from lorascope import analysis
from lorascope.config import LoraConfig, RecordConfig
from lorascope.lora import add_lora, lora_layers
from lorascope.record import Recorder

STEPS = 30
PLANT_AT = 20


def _model(init_range: float):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=64, bos_token_id=0,
                        eos_token_id=0, initializer_range=init_range)
    model = GPT2LMHeadModel(config)
    add_lora(model, LoraConfig(rank=8, alpha=16.0, targets=["attn", "mlp"]))
    return model


def _log_every_step(step: int, loss: float) -> dict[str, float]:
    return {"loss": loss}


def record(path, *, init_range: float = 0.02, sign: float = 1.0, b_lr: float | None = None,
           scalars=_log_every_step, after_step=None, sparse_log: int = 0):
    """Trains STEPS steps of AdamW (lr 1e-2) on random tokens and records them. `sign` −1 climbs
    the loss instead of descending it; `b_lr` gives B its own learning rate; `scalars(step,
    loss)` says what the step logs; `sparse_log` > 0 logs the loss apart from the steps, every
    `sparse_log` steps (as the Hugging Face callback does with logging_steps); `after_step(step,
    layers)` edits the LoRA layers after an update (a planted failure)."""
    model = _model(init_range)
    layers = lora_layers(model)
    b = [layer.B for layer in layers.values()]
    rest = [p for p in model.parameters() if p.requires_grad and not any(p is x for x in b)]
    groups = [{"params": rest}, {"params": b, **({} if b_lr is None else {"lr": b_lr})}]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    rec = Recorder(path, model, RecordConfig(), run_name=path.stem, total_steps=STEPS)
    rec.start(optimizer=opt)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(1, STEPS + 1):
        tokens = torch.randint(0, 64, (4, 16), generator=generator)
        loss = model(input_ids=tokens, labels=tokens).loss
        (sign * loss).backward()
        opt.step()
        opt.zero_grad()
        if after_step is not None:
            with torch.no_grad():
                after_step(step, layers)
        value = float(loss.detach())
        rec.on_optimizer_step(step, {} if sparse_log else scalars(step, value))
        if sparse_log and step % sparse_log == 0:
            rec.log_scalars(step, {"loss": value})
    rec.close("complete")
    return path


def findings(path):
    with lorascope.open(path) as rec:
        return analysis.analyze(rec, (), health=True).findings


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("health")


@pytest.fixture(scope="module")
def healthy(folder):
    return record(folder / "healthy.h5")


def test_the_healthy_run_is_quiet(healthy):
    with lorascope.open(healthy) as rec:
        assert np.isfinite(rec.scalar_columns["loss"]).all()
        assert all(np.any(m.B[-1]) for m in rec.modules.values())  # it trained
    assert findings(healthy) == []


def test_a_diverging_loss_is_flagged_without_any_nan(folder):
    # larger weights let the loss climb far; the loop climbs it: 7.5 → ~20 in 30 steps
    climbing = record(folder / "climbing.h5", init_range=0.5, sign=-1.0)
    with lorascope.open(climbing) as rec:
        loss = rec.scalar_columns["loss"]
    assert np.isfinite(loss).all() and np.median(loss[-5:]) > 2 * np.median(loss[:5])
    run = [f for f in findings(climbing) if f.module is None]
    assert [(f.severity, "the loss diverges" in f.message) for f in run] == [("warning", True)]
    # its twin descends the same loss from the same weights: quiet
    assert [f for f in findings(record(folder / "descending.h5", init_range=0.5)) if f.module is None] == []


def test_a_nan_loss_is_an_error_and_sparse_logging_is_not(folder):
    nan_at = lambda step, loss: {"loss": math.nan if step == PLANT_AT else loss}  # noqa: E731
    (error,) = findings(record(folder / "nan.h5", scalars=nan_at))
    assert (error.severity, error.module, error.step) == ("error", None, PLANT_AT)
    assert "the loss is nan" in error.message
    # a trainer that logs the loss every 5 steps leaves 24 steps without one: not a NaN loss
    sparse = record(folder / "sparse.h5", sparse_log=5)
    with lorascope.open(sparse) as rec:
        assert np.isnan(rec.scalar_columns["loss"]).sum() == STEPS - STEPS // 5
    assert findings(sparse) == []


def test_a_b_that_never_leaves_zero_while_the_loss_is_logged(folder):
    stuck = findings(record(folder / "stuck.h5", b_lr=0.0, sparse_log=5))
    assert {(f.severity, f.matrix) for f in stuck} == {("error", "B")}  # every module's B; no loss finding
    assert len(stuck) == 8 and all("still exactly zero" in f.message for f in stuck)


def test_rank_collapse_of_dw(folder, healthy):
    def one_direction(step, layers):  # B keeps its first column only: ΔW = B A has rank one
        for layer in layers.values():
            layer.B[:, 1:] = 0.0
    found = findings(record(folder / "collapsed.h5", after_step=one_direction))
    collapsed = [f for f in found if "effective rank of ΔW" in f.message]
    assert len(collapsed) == 8 and {(f.severity, f.matrix, f.step) for f in collapsed} == {("warning", "dW", 1)}


def test_a_spike_against_the_runs_own_history(folder, healthy):
    def spike(step, layers):  # one update adds a large rank-one term to every B at PLANT_AT
        if step == PLANT_AT:
            for layer in layers.values():
                u = torch.ones(layer.B.shape[0]) / layer.B.shape[0] ** 0.5
                v = torch.linalg.svd(layer.A.float())[2][0] @ layer.A.float().T  # a direction A reads
                layer.B += 20 * layer.B.norm() * torch.outer(u, v / v.norm())
    found = findings(record(folder / "spiked.h5", after_step=spike))
    spikes = [f for f in found if "jumped" in f.message]
    assert len(spikes) == 8 and {(f.severity, f.matrix, f.step) for f in spikes} == {("warning", "dW", PLANT_AT)}


def test_a_norm_blowup_of_b(folder, healthy):
    def run_away(step, layers):  # from PLANT_AT, B multiplies by 1.5 every step
        if step >= PLANT_AT:
            for layer in layers.values():
                layer.B *= 1.5
    found = findings(record(folder / "blowup.h5", after_step=run_away))
    grown = [f for f in found if f.matrix == "B" and "faster than bounded steps" in f.message]
    assert len(grown) == 8 and all(f.severity == "warning" and PLANT_AT < f.step <= STEPS for f in grown)


def test_a_hugging_face_run_logging_every_few_steps_has_no_nan_loss(tiny_gpt2, tmp_path):
    # The Trainer logs the loss at its logging_steps only: the steps between hold NaN in the file.
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from lorascope.record import LorascopeCallback

    class Tokens(torch.utils.data.Dataset):
        ids = torch.randint(0, 128, (24, 12), generator=torch.Generator().manual_seed(0))

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    model = peft.get_peft_model(tiny_gpt2.train(), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    path = tmp_path / "hf.h5"
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=4, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                         callbacks=[LorascopeCallback(path, RecordConfig(every=1))]).train()
    with lorascope.open(path) as rec:
        loss = rec.scalar_columns["loss"]
        assert np.isfinite(loss).sum() == 3 and np.isnan(loss).sum() == 9  # logged at steps 4, 8, 12
    assert [f for f in findings(path) if f.module is None] == []
