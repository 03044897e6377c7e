"""The health checks' findings (`lorascope.analysis.health`) as sentences, one each: they
already carry the step at which they hold, and each links to the figure that shows it."""
from __future__ import annotations

from dataclasses import replace

from lorascope.analysis.findings import SENTENCES
from lorascope.analysis.findings.base import Evidence, Link, Maker, Sentence
from lorascope.analysis.health import Finding

__all__ = ["health", "FIGURE_OF"]

# Which figure shows what a finding is about: ΔW's rank and spikes are in the spectrum figure, A's
# and B's norms in the moments figure, the loss in the training figure.
FIGURE_OF = {"dW": "spectrum", "A": "moments", "B": "moments"}


def _link(f: Finding) -> Link:
    if f.module is None:
        return Link("training")
    return Link(FIGURE_OF.get(f.matrix or "", "moments"), f.module)


def health(ev: Evidence) -> list[Sentence]:
    """Each health finding, as the checks wrote it (naming its run when several are in view)."""
    out = []
    for f in ev.health:
        text = str(f if ev.several else replace(f, run=None))
        numbers = {"step": float(f.step)} if f.step is not None else {}
        if not numbers:  # every check names the step at which it holds; one that does not is a bug here
            raise ValueError(f"the health finding {text!r} names no step")
        out.append(Sentence("health", text, numbers, _link(f), f.run))
    return out


SENTENCES.register("health")(Maker(health))
