"""The rule every finding about a difference between groups of runs obeys: a difference is
stated only when it exceeds the spread across the groups' seeds.

Precisely: two groups differ in a quantity when each has at least two seeds with a finite value
and their ranges across seeds (min to max) do not overlap: every seed of one group lies above
every seed of the other. With one seed in either group the spread is unknown and no difference
is claimed ("one seed: spread unknown"); ranges that overlap are "no difference beyond the seed
spread", which is a finding too. The range is the test, rather than a standard error, because
studies run 2-3 seeds: a standard deviation of three values is itself uncertain by ±50%, a range
asks nothing of it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lorascope.analysis.findings.base import number

__all__ = ["Spread", "DIFFER", "WITHIN", "UNKNOWN", "compare", "ranked", "weigh"]

DIFFER, WITHIN, UNKNOWN = "differ", "within", "unknown"


@dataclass(frozen=True)
class Spread:
    """One group's value across its seeds: how many seeds had it, their mean, min and max."""
    n: int
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread | None":
        """The spread of the finite values, None when there is none."""
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if not len(v):
            return None
        return cls(len(v), float(v.mean()), float(v.min()), float(v.max()))

    def text(self, unit: str = "", note: str = "") -> str:
        """'0.81 (0.8–0.82, 3 seeds)', or '0.81 (one seed)'; `note` is added inside the parentheses."""
        if self.n == 1:
            return f"{number(self.mean)}{unit} (one seed{note})"
        return f"{number(self.mean)}{unit} ({number(self.low)}–{number(self.high)}, {self.n} seeds{note})"

    def numbers(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}mean": self.mean, f"{prefix}min": self.low, f"{prefix}max": self.high,
                f"{prefix}seeds": float(self.n)}


def compare(a: Spread, b: Spread) -> str:
    """DIFFER when both groups have at least two seeds and their min–max ranges do not overlap,
    UNKNOWN when either has a single seed, WITHIN otherwise."""
    if a.n < 2 or b.n < 2:
        return UNKNOWN
    return DIFFER if a.high < b.low or b.high < a.low else WITHIN


def ranked(spreads: dict[str, Spread], lower_is_better: bool) -> list[tuple[str, Spread]]:
    """The groups best first by their mean."""
    return sorted(spreads.items(), key=lambda kv: kv[1].mean if lower_is_better else -kv[1].mean)


def weigh(quantity: str, order: list[tuple[str, Spread]], ahead: str, unit: str = "") -> list[tuple[str, dict[str, float]]]:
    """The leader (`order[0]`) weighed against every other group by `compare`, as up to three
    sentences with their numbers: the groups it is `ahead` of ('higher', 'earlier') beyond the
    seed spread, those with no difference beyond it, and those whose spread is unknown (one seed)."""
    if len(order) < 2:
        return []
    lead, spread = order[0]
    verdicts: dict[str, list[tuple[str, Spread]]] = {DIFFER: [], WITHIN: [], UNKNOWN: []}
    for label, other in order[1:]:
        verdicts[compare(spread, other)].append((label, other))
    out = []

    def numbers(items: list[tuple[str, Spread]]) -> dict[str, float]:
        found = spread.numbers(f"{lead}.")
        for label, other in items:
            found.update(other.numbers(f"{label}."))
        return found

    def ranges(items: list[tuple[str, Spread]]) -> str:
        return "; ".join(f"{label} {other.text(unit)}" for label, other in items)

    if verdicts[DIFFER]:
        items = verdicts[DIFFER]
        names = ", ".join(label for label, _ in items)
        out.append((f"{lead}'s {quantity} is {ahead} than {names}'s beyond the seed spread "
                    f"({lead} {spread.text(unit)}; {ranges(items)})", numbers(items)))
    if verdicts[WITHIN]:
        items = verdicts[WITHIN]
        names = ", ".join(label for label, _ in items)
        out.append((f"no difference in {quantity} beyond the seed spread between {lead} and {names} "
                    f"({lead} {spread.text(unit)}; {ranges(items)})", numbers(items)))
    if verdicts[UNKNOWN]:
        items = verdicts[UNKNOWN]
        names = ", ".join(label for label, _ in items)
        out.append((f"{lead} against {names} in {quantity}: a single seed, so the spread is unknown and no "
                    f"difference is claimed ({lead} {spread.text(unit)}; {ranges(items)})", numbers(items)))
    return out
