"""The report page: one self-contained HTML file (inline CSS, no script, no network) that shows
the PNG figures lying beside it. Every string that reaches the page goes through `html.escape`:
run names, config values and module names come from recordings, and a recording must not be able
to put markup or script into a page someone opens."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

import pandas as pd

from lorascope.analysis.health import Finding

__all__ = [
    "FigureRef", "FindingLine", "ModuleBlock", "ModuleGroup", "Page", "render_page", "render_table", "format_number",
]


@dataclass
class FigureRef:
    file: str  # a file name inside the report folder (made by paths.safe_name)
    caption: str

    @property
    def anchor(self) -> str:
        """The figure's id in the page (its file name without the extension: unique, and safe)."""
        return self.file.rsplit(".", 1)[0]


@dataclass
class ModuleBlock:
    name: str
    shape: str  # "rank 8 · 576 → 576"
    figures: list[FigureRef]
    role: str = ""  # "attn.c_attn": the module's job inside its block
    anchor: str = ""  # the block's id in the page


@dataclass
class ModuleGroup:
    title: str  # "layer 28 · attn"
    modules: list[ModuleBlock]


@dataclass
class FindingLine:
    """A sentence of the page's Findings and the place in the page that shows it (an element id,
    "" when the figure is not drawn)."""
    text: str
    anchor: str = ""
    where: str = ""  # what the link shows, in words ("fits of transformer.h.0.attn.c_attn")


@dataclass
class Page:
    title: str
    run_colors: dict[str, str]
    runs_table: pd.DataFrame  # one column per run, one row per compared quantity
    training_figures: list[FigureRef]
    groups: list[ModuleGroup]
    summary_table: pd.DataFrame
    comparison_figures: list[FigureRef] = field(default_factory=list)
    # runs that differ only by seed, taken together (report/seed_figures.py); empty otherwise
    seed_table: pd.DataFrame | None = None
    seed_figures: list[FigureRef] = field(default_factory=list)
    seed_note: str = ""
    health: dict[str, list[Finding]] = field(default_factory=dict)  # run name → its findings
    notes: list[str] = field(default_factory=list)
    generated: str = ""
    run_labels: dict[str, str] = field(default_factory=dict)  # run name → its label in the figures
    findings: list[FindingLine] = field(default_factory=list)  # the sentences the page opens with


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;
 padding:1rem 2rem;color:#222;line-height:1.4}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;margin-right:.3em;
 vertical-align:middle}
.runs{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4rem 1.5rem}
figure{margin:.5rem 0 1.2rem}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
details{margin:.3rem 0;border:1px solid #e4e4e4;border-radius:4px;padding:.3rem .8rem}
details>summary{cursor:pointer;font-weight:600}details details{margin-left:.5rem}
.muted{color:#666;font-size:.85rem}.warn{color:#a04000}
"""


def render_page(page: Page) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(page.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(page.title)}</h1>",
    ]
    if page.generated:
        parts.append(f'<p class="muted">{escape(page.generated)}</p>')
    parts.append(_run_legend(page.run_colors, page.run_labels))
    parts.append(_findings(page.findings))
    parts.append('<h2 id="runs">Runs side by side</h2>')
    parts.append(render_table(page.runs_table, index_header=""))
    if page.seed_table is not None:
        parts.append("<h2>Across seeds</h2>")
        parts.append(f'<p class="muted">{escape(page.seed_note)}</p>')
        parts.append(render_table(page.seed_table, index_header=""))
        parts.extend(_figure(f) for f in page.seed_figures)
    parts.append(_health(page.health))
    parts.append("<h2>Training</h2>")
    parts.extend(_figure(f) for f in page.training_figures)
    if page.comparison_figures:
        parts.append("<h2>Between runs</h2>")
        parts.extend(_figure(f) for f in page.comparison_figures)
    parts.append("<h2>Summary per module and run</h2>")
    parts.append(render_table(page.summary_table))
    parts.append("<h2>Modules</h2>")
    parts.extend(_group(g) for g in page.groups)
    if page.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts.extend(f"<li>{escape(n)}</li>" for n in page.notes)
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _run_legend(colors: dict[str, str], labels: dict[str, str]) -> str:
    """Each run's colour, its label in the figures (where it has one) and its full name."""
    items = "".join(
        f'<li><span class="swatch" style="background:{escape(color)}"></span>'
        + (f"<b>{escape(labels[run])}</b> " if labels.get(run, run) != run else "")
        + f"{escape(run)}</li>"
        for run, color in colors.items()
    )
    return f'<ul class="runs">{items}</ul>'


def _health(health: dict[str, list[Finding]]) -> str:
    """The health findings per run, headed by what they hold: a note (expected, worth knowing)
    listed under "Health warnings" would read as an alarm."""
    rows = [(run, f) for run, found in health.items() for f in found]
    if not rows:
        return '<p class="muted">No health findings.</p>'
    alarming = any(f.severity != "note" for _, f in rows)
    items = "".join(f'<li class="warn"><b>{escape(run)}</b>: {escape(str(f))}</li>' for run, f in rows)
    return f"<h3>{'Health warnings' if alarming else 'Health notes'}</h3><ul>{items}</ul>"


def _findings(lines: list[FindingLine]) -> str:
    """The Findings section: one item per sentence, each linking to the figure it comes from."""
    items = "".join(
        f"<li>{escape(line.text)}"
        + (f' <a href="#{escape(line.anchor)}">({escape(line.where)})</a>' if line.anchor else "")
        + "</li>"
        for line in lines
    )
    body = f"<ul>{items}</ul>" if lines else '<p class="muted">No findings with numbers behind them.</p>'
    return f'<h2 id="findings">Findings</h2>{body}'


def _figure(fig: FigureRef) -> str:
    return (
        f'<figure id="{escape(fig.anchor)}"><img src="{escape(fig.file)}" alt="{escape(fig.caption)}" loading="lazy">'
        f"<figcaption>{escape(fig.caption)}</figcaption></figure>"
    )


def _group(group: ModuleGroup) -> str:
    inner = "".join(_module(m) for m in group.modules)
    return f"<details><summary>{escape(group.title)}</summary>{inner}</details>"


def _module(block: ModuleBlock) -> str:
    figures = "".join(_figure(f) for f in block.figures)
    anchor = f' id="{escape(block.anchor)}"' if block.anchor else ""
    return (
        f"<details{anchor}><summary>{escape(block.name)} "
        f'<span class="muted">{escape(block.shape)}</span></summary>{figures}</details>'
    )


def render_table(table: pd.DataFrame, *, index_header: str | None = None) -> str:
    """A DataFrame as an HTML table, every header and cell escaped. With `index_header` given,
    the index becomes the first column under that header."""
    if table is None or table.empty:
        return '<p class="muted">Nothing to show.</p>'
    show_index = index_header is not None
    head = ([escape(index_header)] if show_index else []) + [escape(str(c)) for c in table.columns]
    rows = []
    for key, row in zip(table.index, table.itertuples(index=False)):
        cells = [f"<th>{escape(str(key))}</th>"] if show_index else []
        cells.extend(_cell(v) for v in row)
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return f"<td>{escape(str(value))}</td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{escape(format_number(value))}</td>'
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _cell(value.item())
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<td>—</td>"
    return f"<td>{escape(str(value))}</td>"


def format_number(value: float | int) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "—" if math.isnan(value) else str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"
