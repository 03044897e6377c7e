"""What a kind of finding reads (`Evidence`: the runs, their seed groups, the analysis tables,
the health findings) and what it hands out (`Sentence`: the text, the numbers behind it, the
figure it comes from)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from lorascope.analysis.health import Finding
from lorascope.analysis.seeds import SeedGroup

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Link", "Sentence", "RunFacts", "Evidence", "Maker", "number"]


@dataclass(frozen=True)
class Link:
    """The figure a sentence comes from: a page figure ("training", "training_seeds", "health")
    or a figure kind of `lorascope.report.MODULE_FIGURES` ("moments", "fits", ...) of `module`."""
    figure: str
    module: str | None = None

    def __str__(self) -> str:
        return self.figure if self.module is None else f"{self.figure} of {self.module}"


@dataclass(frozen=True)
class Sentence:
    """One finding: `text` for a person, `numbers` the values it states (by name), `link` the
    figure that shows them. A sentence without a number behind it is refused: it would be an
    opinion, not a finding."""
    kind: str
    text: str
    numbers: dict[str, float]
    link: Link | None = None
    run: str | None = None  # the run or seed group it is about; None for one about several

    def __post_init__(self) -> None:
        if not self.numbers:
            raise ValueError(f"a {self.kind} finding needs the numbers behind it: {self.text!r}")

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class RunFacts:
    """What the findings read of one run without any table: its scalars as numpy columns (what
    `lorascope info` reads), its wall time and its seed group."""
    name: str
    group: str
    scalars: Mapping[str, np.ndarray]
    wall_time: float = math.nan
    micro_step_gradients: bool = False  # two or more micro-step gradients of some step recorded


@dataclass(frozen=True)
class Evidence:
    """Everything the kinds of finding read. `tables` holds the analysis tables at hand (a
    quick look has none); a kind whose tables are missing is left out, and says so."""
    runs: tuple[RunFacts, ...]
    groups: tuple[SeedGroup, ...]
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    health: tuple[Finding, ...] = ()

    def group_of(self, run: str) -> SeedGroup:
        return next(g for g in self.groups if run in g.runs)

    def runs_of(self, group: SeedGroup) -> list[RunFacts]:
        return [r for r in self.runs if r.name in group.runs]

    @property
    def several(self) -> bool:
        """Whether more than one run is in view (sentences then name the run they are about)."""
        return len(self.runs) > 1

    def about(self, label: str) -> str:
        """'label: ', how a sentence about one group starts where several groups are in view;
        '' where there is one."""
        return f"{label}: " if len(self.groups) > 1 else ""


@dataclass(frozen=True)
class Maker:
    """A kind of finding: `build(evidence)` returns its sentences, reading only the `needs`
    tables (and the runs and health findings every evidence has)."""
    build: Callable[[Evidence], list[Sentence]]
    needs: tuple[str, ...] = ()
    # whether the runs hold what the kind is about at all (gradient noise needs micro-step
    # gradients): a kind that does not apply is neither built nor named as left out
    applies: Callable[[Evidence], bool] = lambda ev: True


def number(value: Any, digits: int = 3) -> str:
    """A value as a sentence writes it: integers whole, others to `digits` significant digits."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e12:
        return f"{int(value)}"
    return f"{value:.{digits}g}"
