"""Findings about training as a whole, read from the runs' scalars (numpy columns, what
`lorascope info` reads) and, for the stall, the stats table: the metrics each group ends at and
the step it reaches a level (`metrics`), the update per step falling away while the loss stops
improving (`stall`), and the wall time per group (`wall_time`)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from lorascope.analysis.findings import SENTENCES
from lorascope.analysis.findings.base import Evidence, Link, Maker, RunFacts, Sentence, number
from lorascope.analysis.findings.spread import Spread, ranked, weigh
from lorascope.analysis.overview import CHANCE_LEVEL, CHANCE_NAME, EVAL_EXAMPLES, EVAL_MAJORITY, eval_columns, eval_label, final_value

__all__ = ["metrics", "stall", "wall_time", "metric_columns", "lower_is_better", "reach_step", "level", "chance_floor",
           "STALL_FRACTION", "LOSS_SHARE", "MIN_STALL_SHARE", "MIN_EVALUATIONS"]

# Metrics where lower is better; every other eval metric (accuracy, F1, ...) is better higher.
LOWER_IS_BETTER = ("loss", "perplexity", "error")

# Evaluations every run needs before the step a level is reached at says anything.
MIN_EVALUATIONS = 3

# A level tells learning from chance only this many binomial standard errors above the chance
# level: a model that learned nothing scores within two of them on about 95% of eval sets.
CHANCE_MARGIN_SE = 2.0

# A stall: ΔW's update per step stays below this share of its peak from some step to the end ...
STALL_FRACTION = 0.05
# ... for at least this share of the run's steps (a dip at the very end is not a stall) ...
MIN_STALL_SHARE = 0.2
# ... while the loss improves after that step by less than this share of what it improved before.
LOSS_SHARE = 0.1


def metric_columns(runs: list[RunFacts]) -> list[str]:
    """The eval metrics any run logged (`overview.eval_columns`), in order of first appearance."""
    return list(dict.fromkeys(c for r in runs for c in eval_columns(r.scalars)))


def lower_is_better(column: str) -> bool:
    return any(word in column for word in LOWER_IS_BETTER)


def _series(scalars: Mapping[str, np.ndarray], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a scalar column where it is finite."""
    if column not in scalars or "step" not in scalars:
        return np.zeros(0), np.zeros(0)
    y, x = np.asarray(scalars[column], dtype=float), np.asarray(scalars["step"], dtype=float)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def _logged(runs: list[RunFacts], column: str) -> list[float]:
    """The distinct finite values the runs' last evaluations logged in `column`, ascending."""
    return sorted({v for v in (final_value(r.scalars, column) for r in runs) if math.isfinite(v)})


def _examples(runs: list[RunFacts]) -> tuple[str, dict[str, float]]:
    """'eval set 872 examples' where the recordings logged the eval set size (the last
    evaluation's), with ', majority label 0.6' where they logged its majority-label share (the
    accuracy of a model that learned nothing); '' when neither was logged."""
    parts, numbers = [], {}
    for column, one, several in ((EVAL_EXAMPLES, "eval set {} examples", "eval sets of {}–{} examples"),
                                 (EVAL_MAJORITY, CHANCE_NAME[EVAL_MAJORITY] + " {}",
                                  CHANCE_NAME[EVAL_MAJORITY] + " {}–{}")):
        values = _logged(runs, column)
        if len(values) == 1:
            parts.append(one.format(number(values[0])))
            numbers[column] = values[0]
        elif values:
            parts.append(several.format(number(values[0]), number(values[-1])))
            numbers.update({f"{column}_min": values[0], f"{column}_max": values[-1]})
    return ", ".join(parts), numbers


def level(finals: list[float], lower: bool) -> float:
    """The level every group's mean reaches by its end (the worst final mean), rounded to two
    significant digits towards the start, so that it is a number a person would name."""
    worst = max(finals) if lower else min(finals)
    if worst == 0 or not math.isfinite(worst):
        return worst
    scale = 10 ** (math.floor(math.log10(abs(worst))) - 1)
    return (math.ceil(worst / scale) if lower else math.floor(worst / scale)) * scale


def reach_step(steps: np.ndarray, values: np.ndarray, target: float, lower: bool) -> float:
    """The first step at which `values` reach `target` (at or below it when lower is better),
    NaN when they never do."""
    hit = values <= target if lower else values >= target
    return float(steps[np.argmax(hit)]) if hit.any() else math.nan


def _link(ev: Evidence) -> Link:
    return Link("training_seeds" if any(len(g.runs) > 1 for g in ev.groups) else "training")


def _one_run(ev: Evidence, column: str) -> list[Sentence]:
    """One run in view: where the metric ends and where it was best."""
    run = ev.runs[0]
    steps, values = _series(run.scalars, column)
    if not len(values):
        return []
    lower = lower_is_better(column)
    best = int(np.argmin(values) if lower else np.argmax(values))
    size, size_numbers = _examples([run])
    text = (f"final {eval_label(column)} {number(values[-1])} at step {int(steps[-1])} "
            f"(best {number(values[best])} at step {int(steps[best])}" + (f"; {size})" if size else ")"))
    numbers = {"final": float(values[-1]), "final_step": float(steps[-1]), "best": float(values[best]),
               "best_step": float(steps[best]), **size_numbers}
    return [Sentence("metrics", text, numbers, _link(ev), run.name)]


def _finals(ev: Evidence, column: str) -> dict[str, Spread]:
    spreads = {}
    for group in ev.groups:
        spread = Spread.of([final_value(r.scalars, column) for r in ev.runs_of(group)])
        if spread is not None:
            spreads[group.label] = spread
    return spreads


def _reaching(ev: Evidence, column: str, target: float, lower: bool) -> dict[str, tuple[Spread, int, int]]:
    """Per group: the spread of the steps its seeds reach `target` at, and how many of how many
    seeds reach it; empty unless every run evaluated at least MIN_EVALUATIONS times (with fewer
    there is no curve to reach a level on)."""
    series = {r.name: _series(r.scalars, column) for r in ev.runs}
    if any(len(steps) < MIN_EVALUATIONS for steps, _ in series.values()):
        return {}
    out = {}
    for group in ev.groups:
        runs = ev.runs_of(group)
        steps = [reach_step(*series[r.name], target, lower) for r in runs]
        spread = Spread.of(steps)
        if spread is not None:
            out[group.label] = (spread, spread.n, len(runs))
    return out


def _final_sentences(ev: Evidence, column: str, finals: dict[str, Spread]) -> list[Sentence]:
    """Each group's final value with its seed spread (and the eval set size where recorded), then
    the leader weighed against the others."""
    lower, name = lower_is_better(column), eval_label(column)
    order = ranked(finals, lower)
    size, size_numbers = _examples(list(ev.runs))
    numbers = {k: v for label, s in order for k, v in s.numbers(f"{label}.").items()}
    text = f"final {name}: " + ", ".join(f"{label} {s.text()}" for label, s in order) + (f" ({size})" if size else "")
    out = [Sentence("metrics", text, {**numbers, **size_numbers}, _link(ev))]
    out.extend(Sentence("metrics", t, n, _link(ev))
               for t, n in weigh(f"final {name}", order, "lower" if lower else "higher"))
    return out


def chance_floor(runs: list[RunFacts], column: str) -> float:
    """The lowest level of `column` that tells learning from chance: its chance level
    (`CHANCE_LEVEL`: the majority label's share, for accuracy) plus CHANCE_MARGIN_SE binomial
    standard errors of that share on the smallest eval set; -inf where no chance level was logged."""
    chance = CHANCE_LEVEL.get(column)
    rates = _logged(runs, chance) if chance else []
    if not rates:
        return -math.inf
    p, sizes = rates[-1], _logged(runs, EVAL_EXAMPLES)
    return p + (CHANCE_MARGIN_SE * math.sqrt(p * (1 - p) / sizes[0]) if sizes else 0.0)


def _reach_sentences(ev: Evidence, column: str, finals: dict[str, Spread]) -> list[Sentence]:
    """The step at which each group's seeds first reach the level every group that learned ends
    at (`level` of their final means), then the earliest weighed against the others. A group
    whose final mean is within chance (`chance_floor`) did not learn: it is named as never
    reaching the level rather than pulling the level down to chance, which every run "reaches"
    at its first evaluation."""
    lower, name = lower_is_better(column), eval_label(column)
    floor = chance_floor(list(ev.runs), column)
    learned = [s.mean for s in finals.values() if lower or s.mean > floor]
    if len(learned) < 2:
        return []
    target = level(learned, lower)
    if not lower and target <= floor:
        return []
    reached = _reaching(ev, column, target, lower)
    if len(reached) < 2:
        return []
    steps = ranked({label: s for label, (s, _, _) in reached.items()}, lower_is_better=True)
    parts = []
    for label, s in steps:
        _, k, n = reached[label]
        missed = f", {n - k} of {n} seeds never reach it" if k < n else ""
        parts.append(f"{label} at step {s.text(note=missed)}")
    never = [label for label in finals if label not in reached]
    text = f"{name} reaches {number(target)}: " + ", ".join(parts)
    text += f"; {', '.join(never)} never {'reaches' if len(never) == 1 else 'reach'} it" if never else ""
    numbers = {"level": target, **{k: v for label, s in steps for k, v in s.numbers(f"{label}.step_").items()}}
    out = [Sentence("metrics", text, numbers, _link(ev))]
    out.extend(Sentence("metrics", t, n, _link(ev))
               for t, n in weigh(f"step to reach {name} {number(target)}", steps, "earlier"))
    return out


def metrics(ev: Evidence) -> list[Sentence]:
    """Per eval metric: each group's final value with its seed spread, the leader weighed against
    the others by the seed-spread rule, and the step at which each group first reaches the level
    every group's mean ends at, weighed the same way. With one run in view: its final and best
    value."""
    out = []
    for column in metric_columns(list(ev.runs)):
        if not ev.several:
            out.extend(_one_run(ev, column))
            continue
        finals = _finals(ev, column)
        if finals:
            out.extend(_final_sentences(ev, column, finals))
        if len(finals) > 1:
            out.extend(_reach_sentences(ev, column, finals))
    return out


def _update_per_step(stats, run: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, ‖update of every recorded ΔW‖ per optimizer step): the root of the sum over modules
    of each ΔW's squared update between two snapshots read, over the steps between them."""
    rows = stats[(stats["run"] == run) & (stats["matrix"] == "dW")]
    if not len(rows):
        return np.zeros(0), np.zeros(0)
    # pivot, not pivot_table: the first snapshot's row (no update yet, NaN) must stay, or the
    # steps between the snapshots would be counted from the second
    grid = rows.pivot(index="step", columns="module", values="update_size").sort_index()
    steps = grid.index.to_numpy(dtype=float)
    total = np.sqrt(np.nansum(grid.to_numpy(dtype=float) ** 2, axis=1))  # (snapshots,)
    per_step = total[1:] / np.diff(steps)
    return steps[1:], per_step


def _median_at(steps: np.ndarray, values: np.ndarray, at: float, window: int) -> float:
    """The median of the `window` values around step `at` (a loss is noisy step to step)."""
    i = int(np.searchsorted(steps, at))
    lo = max(0, min(i - window // 2, len(values) - window))
    return float(np.median(values[lo:lo + window]))


def stall(ev: Evidence) -> list[Sentence]:
    """Per run: ΔW's update per step (over every recorded module) stays below STALL_FRACTION of
    its peak from some step to the end, for at least MIN_STALL_SHARE of the run, while the loss
    (its median over a tenth of the run) improves after that step by less than LOSS_SHARE of what
    it improved before. The learning rate at that step, as a share of its peak, says whether the
    schedule caused it."""
    out = []
    for run in ev.runs:
        steps, update = _update_per_step(ev.tables["stats"], run.name)
        loss_steps, loss = _series(run.scalars, "loss")
        if len(update) < 3 or len(loss) < 10:
            continue
        peak = int(np.nanargmax(update))
        low = update < STALL_FRACTION * update[peak]
        # the first step from which the update stays low to the end
        tail = np.flatnonzero(~low)
        start = tail[-1] + 1 if len(tail) else 0
        if start >= len(update) or start <= peak:
            continue
        since = steps[start]
        span = loss_steps[-1] - loss_steps[0]
        if span <= 0 or (loss_steps[-1] - since) < MIN_STALL_SHARE * span:
            continue
        window = max(3, len(loss) // 10)
        first, at, end = (_median_at(loss_steps, loss, s, window) for s in (loss_steps[0], since, loss_steps[-1]))
        before, after = first - at, at - end
        if before <= 0 or after >= LOSS_SHARE * before:
            continue
        share = float(update[-1] / update[peak])
        numbers = {"stall_step": float(since), "peak_update": float(update[peak]), "peak_step": float(steps[peak]),
                   "final_share": share, "loss_before": before, "loss_after": after}
        text = (f"ΔW's update per step falls below {number(100 * STALL_FRACTION)}% of its peak "
                f"({number(update[peak])} at step {int(steps[peak])}) from step {int(since)} on "
                f"({number(100 * share, 2)}% at step {int(steps[-1])})")
        lr_steps, lr = _series(run.scalars, "lr")
        if len(lr) and lr.max() > 0:
            lr_share = float(lr[min(int(np.searchsorted(lr_steps, since)), len(lr) - 1)] / lr.max())
            text += f", the learning rate at {number(100 * lr_share, 2)}% of its peak"
            numbers["lr_share"] = lr_share
        text += (f"; the loss improves by {number(after, 2)} after step {int(since)} "
                 f"against {number(before, 2)} before ({number(first, 4)} → {number(at, 4)} → {number(end, 4)})")
        prefix = f"{run.name}: " if ev.several else ""
        out.append(Sentence("stall", prefix + text, numbers, Link("training"), run.name))
    return out


def wall_time(ev: Evidence) -> list[Sentence]:
    """With several groups: each group's wall time (to its last snapshot) with its seed spread,
    the fastest weighed against the others by the seed-spread rule."""
    if len(ev.groups) < 2:
        return []
    spreads = {}
    for group in ev.groups:
        spread = Spread.of([r.wall_time for r in ev.runs_of(group)])
        if spread is not None:
            spreads[group.label] = spread
    if len(spreads) < 2:
        return []
    order = ranked(spreads, lower_is_better=True)
    numbers = {k: v for label, s in order for k, v in s.numbers(f"{label}.").items()}
    text = "wall time: " + ", ".join(f"{label} {s.text(' s')}" for label, s in order)
    out = [Sentence("wall_time", text, numbers, Link("runs"))]
    out.extend(Sentence("wall_time", t, n, Link("runs")) for t, n in weigh("wall time", order, "shorter", " s"))
    return out


SENTENCES.register("metrics")(Maker(metrics))
SENTENCES.register("stall")(Maker(stall, ("stats",)))
SENTENCES.register("wall_time")(Maker(wall_time))
