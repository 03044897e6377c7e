"""The gradient noise within an optimizer step (seed study 001), from the micro-step gradients
a recording holds with gradient accumulation. For one matrix and one step with K ≥ 2 micro-step
gradients g_1 … g_K (each a micro-batch's own gradient, as recorded), ḡ = (1/K) Σ_k g_k, and
over the n entries of the matrix:

- `signal` = ‖ḡ‖_F², the squared norm of the step's mean gradient;
- `noise` = Σ_entries (1/(K−1)) Σ_k (g_k − ḡ)², the unbiased sample variance across the K
  micro-steps summed over the entries (the trace of the micro-batch gradient's covariance);
- `ratio` = noise / signal. Micro-batches that agree give 0; gradients of pure noise around a
  zero mean give K on average (E‖ḡ‖² = noise / K then), and a true mean gradient μ gives about
  noise / (‖μ‖² + noise / K), below K. Counted in micro-batches, it estimates the "simple noise
  scale" tr Σ / ‖G‖² of McCandlish et al. 2018 (biased low by the noise left in ḡ);
- `loo_cosine`: the mean over k of cos(g_k, mean of the other K − 1): each micro-batch's
  agreement with the rest of its step, 1 for identical gradients, about 0 for pure noise in
  many dimensions. Micro-steps whose g_k or leave-one-out mean is zero have no cosine and are
  left out of the mean.

`ratio` and `loo_cosine` do not depend on the gradients' common scale (lorascope's loop
backpropagates loss / K, so its rows are g_k / K; the sums over a step are the same either way).

Where a number is undefined it is NaN and `status` says why: 'zero_signal' when ḡ = 0 (A's
gradient at the first step while B = 0 is exactly zero), 'nonfinite' when a micro-step holds Inf
or NaN (a step fp16 loss scaling skipped: every number of that step is NaN). Steps with fewer
than two micro-step gradients have no spread to measure and get no row (`step_groups` leaves
them out). Every step of a call is computed at once in float64: a step's rows are summed with
one `np.add.reduceat` over the stacked rows, steps of different K side by side."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from lorascope.errors import UsageError

__all__ = ["has_micro_step_gradients", "STATUSES", "StepGroups", "step_groups", "within_step"]

STATUSES = {
    "ok": "every number defined",
    "zero_signal": "the step's mean gradient is zero (A at step 1 while B = 0): ratio and loo_cosine are NaN",
    "nonfinite": "a micro-step gradient holds Inf or NaN (a step fp16 loss scaling skipped): every number is NaN",
}


@dataclass(frozen=True)
class StepGroups:
    """The optimizer steps with at least two micro-step gradients, and where their rows are:
    `rows` lists the recorded rows step by step, `counts[s]` of them for `steps[s]`."""
    steps: np.ndarray   # (S,) increasing
    counts: np.ndarray  # (S,) K per step, each ≥ 2
    rows: np.ndarray    # (Σ counts,) indices into the recorded gradient rows

    def pick(self, which: np.ndarray) -> "StepGroups":
        """Only the steps at positions `which` (increasing)."""
        member = np.zeros(len(self.steps), dtype=bool)
        member[which] = True
        return StepGroups(self.steps[member], self.counts[member], self.rows[np.repeat(member, self.counts)])

    def blocks(self, values_per_row: int, budget: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, counts) of consecutive whole steps holding about `budget` values at a time (at
        least one step each), so that a long series never sits in memory whole in float64."""
        if not len(self.steps):
            return
        per_block = max(int(self.counts.max()), budget // max(1, values_per_row))
        first_row = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        block = first_row // per_block
        cuts = np.flatnonzero(np.diff(block)) + 1
        for steps in np.split(np.arange(len(self.steps)), cuts):
            a, b = int(first_row[steps[0]]), int(first_row[steps[-1]] + self.counts[steps[-1]])
            yield self.rows[a:b], self.counts[steps]


def step_groups(steps: np.ndarray) -> StepGroups:
    """The recorded gradient rows grouped by the optimizer step they feed (`steps`, one per row,
    in any order), keeping the steps with K ≥ 2 rows; a step's rows keep their recorded order."""
    steps = np.asarray(steps, dtype=np.int64)
    order = np.argsort(steps, kind="stable")
    unique, counts = np.unique(steps[order], return_counts=True)
    keep = counts >= 2
    return StepGroups(unique[keep], counts[keep], order[np.repeat(keep, counts)])


def has_micro_step_gradients(recording: Any) -> bool:
    """Whether `recording` holds two or more micro-step gradients of some optimizer step (gradients
    recorded with accumulation): what the grad_noise table, its figure and its sentence need."""
    steps = getattr(recording, "grad_steps", None)
    return steps is not None and len(step_groups(np.asarray(steps)).steps) > 0


def within_step(G: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """`signal`, `noise`, `ratio`, `loo_cosine` and `status` (see the module's docstring) per
    step, for the micro-step gradients G (N, ...) whose first counts[0] rows belong to the first
    step, the next counts[1] to the second, and so on (each count ≥ 2, Σ counts = N)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 2).any() or counts.sum() != len(G):
        raise UsageError(f"within_step needs counts of at least 2 micro-steps per step summing to the {len(G)} "
                         f"gradient rows, got {counts.tolist()}; group the rows with step_groups")
    S = len(counts)
    X = np.array(G, dtype=np.float64).reshape(len(G), -1)  # (N, n), a copy of our own
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    owner = np.repeat(np.arange(S), counts)  # the step of each row
    finite = np.logical_and.reduceat(np.isfinite(X).all(axis=1), starts)
    X[~finite[owner]] = 0.0  # computed as zeros without overflow warnings, reported as NaN

    total = np.add.reduceat(X, starts, axis=0)  # (S, n)
    mean = total / counts[:, None]
    signal = np.einsum("sn,sn->s", mean, mean)
    dev = X - mean[owner]  # two passes (deviations, not Σg² − Kḡ²): identical gradients give exactly 0
    noise = np.add.reduceat(np.einsum("kn,kn->k", dev, dev), starts) / (counts - 1)
    del dev

    rest = (total[owner] - X) / (counts - 1)[owner, None]  # (N, n) the mean of the other K − 1
    dot = np.einsum("kn,kn->k", X, rest)
    norms = np.sqrt(np.einsum("kn,kn->k", X, X) * np.einsum("kn,kn->k", rest, rest))
    defined = norms > 0
    cos = np.clip(np.divide(dot, norms, out=np.zeros_like(dot), where=defined), -1.0, 1.0)
    n_defined = np.add.reduceat(defined.astype(np.int64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        loo_cosine = np.where(n_defined > 0, np.add.reduceat(cos, starts) / n_defined, np.nan)
        ratio = np.where(signal > 0, noise / np.where(signal > 0, signal, 1.0), np.nan)

    status = np.where(~finite, "nonfinite", np.where(signal > 0, "ok", "zero_signal")).astype(object)
    bad = ~finite
    for values in (signal, noise, ratio, loo_cosine):
        values[bad] = np.nan
    return {"signal": signal, "noise": noise, "ratio": ratio, "loo_cosine": loo_cosine, "status": status}
