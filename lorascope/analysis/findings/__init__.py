"""Findings in sentences: what the analysis tables say about a set of runs, as short sentences
that each carry the numbers behind them and name the figure they come from.

Each kind of finding is one small function (a `Maker`, registered in `SENTENCES`) that reads the
tables it needs from an `Evidence` (the runs' scalars, their seed groups, the analysis tables,
the health findings) and returns zero or more `Sentence`s. Two rules hold for every kind: no
sentence without a number behind it (a `Sentence` without numbers cannot be made), and no
sentence about a difference between groups of runs inside the spread across their seeds (the
rule is `spread.compare`; docs/findings.md).

Importing this package costs nothing: the kinds are declared here with their one-line
descriptions, and `lorascope.analysis.findings.catalog` implements them on first use."""
from __future__ import annotations

from lorascope.lazy import lazy_exports
from lorascope.registry import Registry

__all__ = ["SENTENCES", "Sentence", "Link", "Evidence", "RunFacts", "Maker", "Findings", "evidence",
           "find", "TABLES_NEEDED"]

# The kinds of finding, in the order their sentences are shown.
SENTENCES: Registry = Registry("finding kind", declared={
    "zero_start": "when the factor that starts at zero (B, or A under gaussian_b) leaves it, per run",
    "families": "each matrix's best-fitting distribution family at the first and the last fitted step, per group",
    "metrics": "final eval metrics per group with their seed spread, and the step each group reaches a level",
    "stall": "the update per step falling to a few % of its peak while the loss stops improving",
    "wall_time": "wall time per group where runs differ in it",
    "grad_noise": "how noisy a step's micro-batch gradients are against their mean, per matrix, against pure noise",
    "health": "the health checks' findings, one sentence each",
}, provider="lorascope.analysis.findings.catalog")

# Every table some kind of finding reads, and the columns it reads of it: what a report keeps of
# each module's tables for its findings.
TABLES_NEEDED: dict[str, tuple[str, ...]] = {
    "stats": ("run", "module", "matrix", "step", "frobenius", "update_size"),
    "fits": ("run", "module", "matrix", "step", "family", "best", "method", "shape"),
    "grad_noise": ("run", "module", "role", "matrix", "step", "micro_steps", "ratio", "status"),
}

__getattr__, __dir__ = lazy_exports(__name__, {
    "Sentence": "lorascope.analysis.findings.base",
    "Link": "lorascope.analysis.findings.base",
    "Evidence": "lorascope.analysis.findings.base",
    "RunFacts": "lorascope.analysis.findings.base",
    "Maker": "lorascope.analysis.findings.base",
    "Findings": "lorascope.analysis.findings.compose",
    "evidence": "lorascope.analysis.findings.compose",
    "find": "lorascope.analysis.findings.compose",
})
