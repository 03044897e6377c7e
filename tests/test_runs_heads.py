"""Classification with LoRA trains the task's new head (PEFT's modules_to_save for SEQ_CLS):
the head's weights change, it is counted in the model report, its norms are in the recording,
the adapters file carries it so that a reloaded model predicts the same; with
lora.train_head = false it stays at its init. Runs of `runs.session.run` on tiny-bert and the
embedded rotten-tomatoes reviews."""
from __future__ import annotations

import h5py
import json

import pytest
import torch
from safetensors.torch import load_file

import lorascope
from lorascope.config import ModelConfig, RunConfig, apply_overrides
from lorascope.data import build_data
from lorascope.lora import load_adapters
from lorascope.models import head_modules, load_model
from lorascope.runs.session import run
from lorascope.train.amp import resolve_precision
from lorascope.train.evaluate import evaluate

HEAD = ("classifier.weight", "classifier.bias")


def _config(tmp_path, name: str, **overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {
        "model.name": "tiny-bert", "data.source": "rotten_tomatoes", "data.task": "classification",
        "data.max_examples": 48, "data.max_length": 32, "data.batch_size": 4, "optim.steps": 5,
        "optim.lr": 1e-2, "lora.targets": ["attn"], "lora.layers": ":", "eval_batches": 2,
        "device": "cpu", "output": str(tmp_path / f"{name}.h5"), **overrides,
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads")
    done = {}
    for name, train_head in (("trained", True), ("frozen", False)):
        cfg = _config(tmp, name, **{"lora.train_head": train_head})
        lines: list[str] = []
        done[name] = (cfg, run(cfg, log=lines.append), lines)
    return done


def _fresh_head() -> dict[str, torch.Tensor]:
    model, _ = load_model(ModelConfig(name="tiny-bert"), "classification")
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in HEAD}


def test_the_head_trains_and_the_adapters_file_carries_it(runs):
    _, summary, _ = runs["trained"]
    saved = load_file(str(summary.adapters))
    fresh = _fresh_head()
    for name in HEAD:
        assert name in saved
        assert not torch.equal(saved[name], fresh[name])  # it moved from its random init


def test_with_train_head_false_the_head_stays_frozen(runs):
    cfg, summary, lines = runs["frozen"]
    saved = load_file(str(summary.adapters))
    assert not set(HEAD) & set(saved)  # nothing but LoRA trained, so nothing else is saved
    assert not any("Other trainable" in line for line in lines)
    with lorascope.open(summary.recording) as rec:
        assert not [c for c in rec.scalar_columns if c.startswith("head/")]
        assert "lr_other" not in rec.scalar_columns  # no "other" optimizer group
    with h5py.File(summary.recording, "r") as f:
        assert "heads" not in f.attrs


def test_the_model_report_counts_the_head(runs):
    _, summary, lines = runs["trained"]
    _, frozen, _ = runs["frozen"]
    # tiny-bert: hidden 32, two labels -> a 2x32 weight and 2 biases
    report = [line.strip() for text in lines for line in text.splitlines()]
    assert "Other trainable parameters: 66 (classifier 66)" in report
    with lorascope.open(summary.recording) as trained, lorascope.open(frozen.recording) as lora_only:
        assert trained.environment["trainable_parameters"] == lora_only.environment["trainable_parameters"] + 66
        lora = sum(m.rank * (m.in_features + m.out_features) for m in lora_only.modules.values())
        assert lora_only.environment["trainable_parameters"] == lora


def test_the_recorded_head_norms_are_torchs_norms(runs):
    cfg, summary, _ = runs["trained"]
    saved = load_file(str(summary.adapters))
    fresh = _fresh_head()
    with lorascope.open(summary.recording) as rec:
        scalars = rec.scalar_columns
        steps = scalars["step"]
        assert list(steps) == list(range(cfg.optim.steps + 1))
        for name in HEAD:
            norm = scalars[f"head/{name}/norm"]
            update = scalars[f"head/{name}/update"]
            # known answers: step 0 is the fresh head, the last step the head the run saved
            assert norm[0] == pytest.approx(float(torch.linalg.norm(fresh[name])), rel=1e-6, abs=1e-12)
            assert norm[-1] == pytest.approx(float(torch.linalg.norm(saved[name])), rel=1e-6)
            assert torch.isnan(torch.tensor(update[0])) and (update[1:] > 0).all()
            # the steps' changes add up to at least the whole change (triangle inequality)
            assert update[1:].sum() >= float(torch.linalg.norm(saved[name] - fresh[name])) * (1 - 1e-6)
        assert rec.scalar_columns["lr_other"][1] == pytest.approx(rec.scalar_columns["lr"][1])
    with h5py.File(summary.recording, "r") as f:  # what h5dump shows: the root attribute
        heads = json.loads(f.attrs["heads"])
    assert heads == [{"name": "classifier.weight", "shape": [2, 32], "trainable": True},
                     {"name": "classifier.bias", "shape": [2], "trainable": True}]


def test_a_reloaded_model_predicts_the_same(runs):
    cfg, summary, _ = runs["trained"]
    model, tokenizer = load_model(cfg.model, "classification")
    load_adapters(model, summary.adapters)
    device = torch.device("cpu")
    precision = resolve_precision("off", device)
    data = build_data(cfg.data, tokenizer, seed=cfg.seed, task="classification")
    again = evaluate(model, data.val, device, precision, "classification", max_batches=cfg.eval_batches)
    assert again == pytest.approx(summary.eval, rel=1e-6)
    # and the head is part of that: the same adapters over a fresh head predict otherwise
    with torch.no_grad():
        for name, value in _fresh_head().items():
            model.get_parameter(name).copy_(value)
    other = evaluate(model, data.val, device, precision, "classification", max_batches=cfg.eval_batches)
    assert other["loss"] != pytest.approx(summary.eval["loss"], rel=1e-6)


def test_lora_trains_the_new_head_only_not_the_pretrained_pooler(runs):
    cfg, summary, _ = runs["trained"]
    assert not [k for k in load_file(str(summary.adapters)) if "pooler" in k]
    model, _ = load_model(cfg.model, "classification")
    assert set(head_modules(model, pooler=False)) == {"classifier"}
