"""The page's Findings: the sentences of `lorascope.analysis.findings`, computed from the rows of
the tables the report already analysed for each module (no second pass over the recordings),
each linked to the figure of the page it comes from."""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from lorascope.analysis.findings import TABLES_NEEDED, evidence, find
from lorascope.analysis.findings.base import Link
from lorascope.analysis.health import Finding
from lorascope.report.html import FigureRef, FindingLine
from lorascope.report.render import ModuleResult

__all__ = ["finding_lines"]

# Page elements a sentence may link to besides the module figures (the runs table's id).
PAGE_ANCHORS = {"runs": "runs"}
# What a link shows, in words.
PAGE_NAMES = {"runs": "runs table", "training": "training figure", "training_seeds": "figure across seeds"}


def _where(link: Link) -> str:
    if link.module is None:
        return PAGE_NAMES.get(link.figure, link.figure)
    return f"{link.figure} figure of {link.module}"


def _tables(results: Sequence[ModuleResult]) -> dict[str, pd.DataFrame]:
    tables = {}
    for table, columns in TABLES_NEEDED.items():
        frames = [r.tables[table] for r in results if table in r.tables and len(r.tables[table])]
        tables[table] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))
    return tables


def _anchor(link: Link | None, page: dict[str, str], modules: dict[str, ModuleResult]) -> str:
    """The id of the figure that shows `link`: a page figure by name, a module's figure of that
    kind, else the module's block; "" when none of them is on the page."""
    if link is None:
        return ""
    if link.module is None:
        # the figure across seeds is drawn only when some runs differ only by seed
        return page.get(link.figure) or (page.get("training", "") if link.figure.startswith("training") else "")
    result = modules.get(link.module)
    if result is None:
        return ""
    return result.anchors.get(link.figure) or result.block.anchor


def finding_lines(recs: Sequence[Any], results: Sequence[ModuleResult], page_figures: Sequence[FigureRef],
                  health: Sequence[Finding]) -> list[FindingLine]:
    """The sentences for the runs in `recs`, from the modules' rows of the tables and the health
    findings (the run-level ones first), each with the id of its figure."""
    found = find(evidence(recs, _tables(results), list(health)))
    page = {**PAGE_ANCHORS, **{ref.anchor: ref.anchor for ref in page_figures}}
    modules = {r.block.name: r for r in results}
    lines = []
    for sentence in found.sentences:
        anchor = _anchor(sentence.link, page, modules)
        lines.append(FindingLine(sentence.text, anchor, _where(sentence.link) if anchor else ""))
    if found.left_out:  # a report has every table the findings read; named rather than dropped if not
        lines.append(FindingLine(found.left_out_note()))
    return lines
