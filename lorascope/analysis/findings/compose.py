"""The findings of a set of runs: `evidence` gathers what the kinds of finding read (from
recordings, the analysis tables at hand and the health findings), `find` asks every registered
kind for its sentences. A kind whose tables are not at hand is left out and named, never dropped
in silence."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from lorascope.analysis.findings import SENTENCES
from lorascope.analysis.findings.base import Evidence, RunFacts, Sentence
from lorascope.analysis.grad_noise import has_micro_step_gradients
from lorascope.analysis.health import Finding
from lorascope.analysis.overview import wall_time
from lorascope.analysis.seeds import seed_groups

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Findings", "evidence", "find", "short_labels"]


@dataclass
class Findings:
    """The sentences, in the registry's order of kinds, and the kinds left out with the tables
    they would have needed."""
    sentences: list[Sentence]
    left_out: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One line per sentence, then one naming the kinds left out (if any)."""
        lines = [s.text for s in self.sentences]
        if self.left_out:
            lines.append(self.left_out_note())
        return lines

    def left_out_note(self) -> str:
        kinds = "; ".join(f"{kind} (needs the {' and '.join(tables)} table{'s' if len(tables) > 1 else ''})"
                          for kind, tables in self.left_out.items())
        return f"not looked at here: {kinds}"


def short_labels(labels: Sequence[str]) -> list[str]:
    """The labels without the '-'-separated words every one of them starts or ends with
    ('study003-svd-lr0.0004', 'study003-kaiming-lr0.0004' → 'svd', 'kaiming'), where what is
    left is still one distinct, non-empty label each; else the labels as they are."""
    if len(labels) < 2:
        return list(labels)
    words = [label.split("-") for label in labels]
    head = 0
    while all(len(w) > head + 1 for w in words) and len({w[head] for w in words}) == 1:
        head += 1
    tail = 0
    while all(len(w) > head + tail + 1 for w in words) and len({w[-1 - tail] for w in words}) == 1:
        tail += 1
    short = ["-".join(w[head:len(w) - tail]) for w in words]
    return short if len(set(short)) == len(short) and all(short) else list(labels)


def evidence(recordings: Sequence[Any], tables: Mapping[str, pd.DataFrame] | None = None,
             health: Sequence[Finding] = ()) -> Evidence:
    """What the findings read of `recordings` (anything with `run_name`, `config`,
    `scalar_columns`, `times`), the analysis `tables` at hand and the health findings. Seed
    groups are named by `short_labels` of their labels (a sweep's shared name said once is
    enough); runs keep their names."""
    groups = seed_groups(recordings)
    groups = [replace(g, label=short) for g, short in zip(groups, short_labels([g.label for g in groups]))]
    label = {run: g.label for g in groups for run in g.runs}
    runs = tuple(RunFacts(r.run_name, label[r.run_name], r.scalar_columns, wall_time(r), has_micro_step_gradients(r))
                 for r in recordings)
    return Evidence(runs, tuple(groups), dict(tables or {}), tuple(health))


def find(ev: Evidence, kinds: Sequence[str] | None = None) -> Findings:
    """The sentences of every kind (or of `kinds`) whose tables the evidence holds."""
    sentences: list[Sentence] = []
    left_out: dict[str, tuple[str, ...]] = {}
    for kind in kinds or SENTENCES.names():
        maker = SENTENCES.get(kind)
        if not maker.applies(ev):
            continue
        missing = tuple(t for t in maker.needs if t not in ev.tables)
        if missing:
            left_out[kind] = missing
            continue
        sentences.extend(maker.build(ev))
    return Findings(sentences, left_out)
