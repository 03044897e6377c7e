"""Records to batches: ``build_data(cfg, tokenizer, seed, task) -> DataBundle``.

A source gives records (``sources.py``), a task encodes them (``tasks.py``), and this module splits
them by record into train and validation with the seed, caps their number, and wraps them in
DataLoaders whose batches are padded on the right (labels padded with -100).
"""
from __future__ import annotations

import random
from functools import partial
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from lorascope.config import DataConfig
from lorascope.data import TASKS
from lorascope.data.sources import SourceData, load_source
from lorascope.data.tasks import IGNORE_INDEX, Encoded
from lorascope.errors import UsageError

__all__ = ["DataBundle", "build_data", "collate", "split_records"]


@dataclass
class DataBundle:
    task: str
    source: str  # a description of where the records came from
    train: DataLoader
    val: DataLoader | None  # None when val_fraction is 0
    val_records: list[dict[str, Any]]  # the held-out records, raw, for generated samples
    num_records: int  # records used (after max_examples)
    num_train: int  # examples (a long document makes several under causal_lm)
    num_val: int
    truncated: int = 0  # records cut to max_length
    label_names: list[str] = field(default_factory=list)  # classification: id -> name
    tokenizer: Any = field(default=None, repr=False)
    config: DataConfig | None = field(default=None, repr=False)

    def sample_pairs(self, n: int) -> list[tuple[str, str]]:
        """(prompt, reference) from the first n held-out records, for a causal task: the prompt as
        training saw it (truncated the same way), decoded; the reference is what the data says
        should follow. [] for classification."""
        task = TASKS.get(self.task)
        pairs = (task.sample(record, self.tokenizer, self.config) for record in self.val_records[:n])
        return [pair for pair in pairs if pair is not None]

    def sample_prompts(self, n: int) -> list[str]:
        """The prompts of sample_pairs(n), to generate from."""
        return [prompt for prompt, _ in self.sample_pairs(n)]

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "records": self.num_records,
                "train_examples": self.num_train, "val_examples": self.num_val,
                "truncated": self.truncated, "labels": self.label_names}


def split_records(n: int, val_fraction: float, max_examples: int, seed: int) -> tuple[list[int], list[int]]:
    """Shuffles record indices with the seed, keeps the first max_examples (0 = all), and holds out
    val_fraction of them (at least one when the fraction is above 0). Returns (train, val)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    if max_examples > 0:
        order = order[:max_examples]
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if len(order) - n_val < 1:
        raise UsageError(
            f"{len(order)} record(s) leave nothing to train on after holding out "
            f"data.val_fraction = {val_fraction}; give more data or lower val_fraction"
        )
    return order[n_val:], order[:n_val]


_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX}


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pads every token list on the right to the longest in the batch; int labels stay a vector.
    The attention mask is made here when the examples do not carry one (causal tasks)."""
    if "attention_mask" not in examples[0]:
        examples = [{**e, "attention_mask": [1] * len(e["input_ids"])} for e in examples]
    batch = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if not isinstance(values[0], list):
            batch[key] = torch.tensor(values, dtype=torch.long)
            continue
        width = max(len(v) for v in values)
        pad = _PAD_VALUES.get(key, pad_id)
        batch[key] = torch.tensor([v + [pad] * (width - len(v)) for v in values], dtype=torch.long)
    return batch


def _check_length(cfg: DataConfig, tokenizer: Any) -> None:
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel; only a real limit is worth enforcing.
    if isinstance(limit, int) and limit < 1_000_000 and cfg.max_length > limit:
        raise UsageError(
            f"data.max_length = {cfg.max_length} is longer than this model accepts ({limit} tokens); "
            f"use data.max_length <= {limit}"
        )


def _label_names(encoded: Encoded, source: SourceData, cfg: DataConfig) -> list[str]:
    names = encoded.label_names or []
    column = cfg.label_column or next((c for c in ("label", "labels") if c in source.records[0]), "")
    known = source.label_names.get(column)
    # Integer labels with names given by the source (a ClassLabel feature, an embedded set).
    if known and names == [str(i) for i in range(cfg.num_labels)] and len(known) <= cfg.num_labels:
        return known + names[len(known):]
    return names


def _loader(examples: list[dict], cfg: DataConfig, pad_id: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        examples, batch_size=cfg.batch_size, shuffle=shuffle, generator=generator,
        collate_fn=partial(collate, pad_id=pad_id),
    )


def build_data(cfg: DataConfig, tokenizer: Any, seed: int, task: str | None = None) -> DataBundle:
    """Loads cfg.source, encodes it for the task (cfg.task unless given), splits train/validation by
    record with the seed, and returns the loaders. The same inputs give the same batches."""
    task_name = task or cfg.task
    task_impl = TASKS.get(task_name)
    _check_length(cfg, tokenizer)
    source = load_source(cfg.source)
    train_idx, val_idx = split_records(len(source.records), cfg.val_fraction, cfg.max_examples, seed)
    chosen = sorted(train_idx + val_idx)
    records = [source.records[i] for i in chosen]
    encoded = task_impl.encode(records, tokenizer, cfg)
    # Split the encoded examples by the record they came from, so that a long document's chunks
    # all land on the same side, and in the shuffled order of split_records.
    position = {record: pos for pos, record in enumerate(chosen)}
    by_origin: dict[int, list[dict]] = {}
    for origin, example in zip(encoded.origins, encoded.examples):
        by_origin.setdefault(origin, []).append(example)
    train = [e for i in train_idx for e in by_origin.get(position[i], [])]
    val = [e for i in val_idx for e in by_origin.get(position[i], [])]
    if not train:
        raise UsageError(
            f"no training examples came out of {source.description}; the texts may be empty"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return DataBundle(
        task=task_name,
        source=source.description,
        train=_loader(train, cfg, pad_id, shuffle=True, seed=seed),
        val=_loader(val, cfg, pad_id, shuffle=False, seed=seed) if val else None,
        val_records=[source.records[i] for i in val_idx],
        num_records=len(chosen),
        num_train=len(train),
        num_val=len(val),
        truncated=encoded.truncated,
        label_names=_label_names(encoded, source, cfg),
        tokenizer=tokenizer,
        config=cfg,
    )
