"""Findings about the weights, from the stats and fits tables: when the factor that starts at
zero leaves it (`zero_start`), and how each matrix's best-fitting distribution family moves
between the first and the last fitted snapshot (`families`). Both speak per seed group, counting
modules over the group's runs; the tables arrive as DataFrames, so this module imports no pandas."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lorascope.analysis.findings import SENTENCES
from lorascope.analysis.findings.base import Evidence, Link, Maker, Sentence, number

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["zero_start", "families", "SHAPE_NAMES"]

KEYS = ["run", "module", "matrix"]
# the letter a family's shape parameter goes by in a sentence
SHAPE_NAMES = {"gennorm": "β", "t": "ν"}


def _modules(n: int, runs: int) -> str:
    """'modules', 'module', or 'modules across 3 seeds': what a count of modules counts."""
    return f"module{'s' if n != 1 else ''}" + (f" across {runs} seeds" if runs > 1 else "")


def _departures(stats: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, module, matrix) of A and B that is exactly zero at its first snapshot:
    `left` the first step at which it is not (NaN: it never leaves), `before` the snapshot read
    before that one, `last` the last step read."""
    s = stats.loc[stats["matrix"].isin(["A", "B"]), KEYS + ["step", "frobenius"]].sort_values(KEYS + ["step"])
    by = s.groupby(KEYS, sort=False)
    s = s.assign(start=by["frobenius"].transform("first"), before=by["step"].shift(1))
    zero = s[s["start"] == 0]
    moved = zero[zero["before"].notna() & (zero["frobenius"] > 0)]
    first = moved.loc[moved.groupby(KEYS, sort=False)["step"].idxmin(), KEYS + ["step", "before"]]
    per = zero.groupby(KEYS, sort=False)["step"].max().rename("last").reset_index()
    return per.merge(first.rename(columns={"step": "left"}), on=KEYS, how="left")


def zero_start(ev: Evidence) -> list[Sentence]:
    """'B leaves zero at step 1 in 14/14 modules': for each group and each matrix that starts at
    exactly zero (B under the usual inits, A under gaussian_b), how many of those modules leave
    zero and by which step ('at step s' when the snapshot read before it is step s-1)."""
    stats = ev.tables["stats"]
    per = _departures(stats)
    # every (run, module, matrix) with rows of A or B, whatever its start: what "n of total" counts
    modules = stats.loc[stats["matrix"].isin(["A", "B"]), ["run", "module", "matrix"]].drop_duplicates()
    out = []
    for group in ev.groups:
        mine = per[per["run"].isin(group.runs)]
        for matrix, rows in mine.groupby("matrix", sort=True):
            left = rows[rows["left"].notna()]
            n, k = len(rows), len(left)
            total = int(((modules["matrix"] == matrix) & modules["run"].isin(group.runs)).sum())
            text = ev.about(group.label)
            numbers = {"modules_at_zero": float(n), "modules": float(total), "left": float(k)}
            if k:
                first, last = int(left["left"].min()), int(left["left"].max())
                exact = first == last and bool((left["before"] == left["left"] - 1).all())
                when = f"at step {first}" if exact else f"by step {last}"
                text += f"{matrix} leaves zero {when} in {k}/{n} {_modules(n, len(group.runs))}"
                if first != last:
                    text += f" (the first at step {first})"
                numbers.update(first_step=float(first), last_step=float(last))
            else:
                text += f"{matrix} never leaves zero in {n} {_modules(n, len(group.runs))}"
            if k < n:
                through = int(rows.loc[rows["left"].isna(), "last"].max())
                if k:
                    text += f"; {n - k} stay at zero through step {through}"
                else:
                    text += f" (through step {through})"
                numbers["stays_through"] = float(through)
            if n < total:
                text += f" ({matrix} starts at zero in {n} of {total})"
            out.append(Sentence("zero_start", text, numbers, Link("moments", str(rows["module"].iloc[0])),
                                group.label))
    return out


def _best(fits: pd.DataFrame) -> pd.DataFrame:
    """The best family's own row of every fitted snapshot whose fit is a maximum of the
    likelihood (method 'mle'; bounded or unconverged fits are never ranked)."""
    best = fits[fits["best"].astype(bool) & (fits["method"] == "mle")]
    return best[KEYS + ["step", "family", "shape"]].sort_values(KEYS + ["step"])


def _switches(best: pd.DataFrame) -> pd.DataFrame:
    """Per (run, module, matrix): its family at the first and the last fitted step, those steps,
    its shape at the last, and `since`: the step from which the last family held to the end."""
    by = best.groupby(KEYS, sort=False)
    best = best.assign(final=by["family"].transform("last"))
    other = best[best["family"] != best["final"]].groupby(KEYS, sort=False)["step"].max().rename("other")
    best = best.join(other, on=KEYS)
    held = best[best["other"].isna() | (best["step"] > best["other"])]
    per = by.agg(start=("family", "first"), first_step=("step", "first"), end=("family", "last"),
                 last_step=("step", "last"), shape=("shape", "last"))
    return per.join(held.groupby(KEYS, sort=False)["step"].min().rename("since")).reset_index()


def _family(name: str, shape: float) -> str:
    letter = SHAPE_NAMES.get(name)
    return f"{name} ({letter} {number(shape, 2)})" if letter and shape == shape else name


def families(ev: Evidence) -> list[Sentence]:
    """'A's best family: uniform → gennorm (β 6.4) by step 8': per group and matrix, the family
    most modules start in and the one most end in, how many, and the median step from which the
    final family held (its range over the modules in parentheses)."""
    per = _switches(_best(ev.tables["fits"]))
    out = []
    for group in ev.groups:
        mine = per[per["run"].isin(group.runs)]
        for matrix, rows in mine.groupby("matrix", sort=True):
            n = len(rows)
            start, end = rows["start"].mode().iloc[0], rows["end"].mode().iloc[0]
            ended = rows[rows["end"] == end]
            first, last = int(rows["first_step"].min()), int(rows["last_step"].max())
            shape = float(ended["shape"].median())
            text = ev.about(group.label) + f"{matrix}'s best family: "
            numbers = {"modules": float(n), "ending_in_family": float(len(ended)), "last_step": float(last)}
            if end in SHAPE_NAMES:
                numbers["shape"] = shape
            seeds = len(group.runs)
            if start == end:
                stayed = int(((rows["start"] == end) & (rows["end"] == end)).sum())
                text += (f"still {_family(end, shape)} at step {last}, as at step {first}, "
                         f"in {stayed}/{n} {_modules(n, seeds)}")
                numbers.update(stayed=float(stayed), first_step=float(first))
            else:
                began = int((rows["start"] == start).sum())
                since = ended["since"]
                text += (f"{start} → {_family(end, shape)} by step {int(since.median())}"
                         f" ({int(since.min())}–{int(since.max())} over modules); {end} in {len(ended)}/{n} "
                         f"{_modules(n, seeds)} at step {last}, {start} in {began}/{n} at step {first}")
                numbers.update(switch_step=float(since.median()), began=float(began), first_step=float(first))
            out.append(Sentence("families", text, numbers, Link("fits", str(ended["module"].iloc[0])), group.label))
    return out


SENTENCES.register("zero_start")(Maker(zero_start, ("stats",)))
SENTENCES.register("families")(Maker(families, ("fits",)))
