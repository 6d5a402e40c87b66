"""The inspection page: one self-contained HTML file (no script, no external resource) with
the layer table, the rewritten graph as inline SVG, every mask heatmap as a data URI, the
graph after each pipeline step and the before/after diff."""

from __future__ import annotations

import base64
from html import escape
from typing import TYPE_CHECKING

from .graph import DENSE_COLOR, REWRITTEN_COLOR, anchor

if TYPE_CHECKING:
    from .inspection import Inspection

__all__ = ["render_page"]

_STYLE = f"""
body {{ font-family: Helvetica, Arial, sans-serif; margin: 1.5em; color: #212529; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }} h3 {{ font-size: 1em; }}
table {{ border-collapse: collapse; font-size: 0.82em; }}
th, td {{ border: 1px solid #ced4da; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #e9ecef; }}
tr.sparse td {{ background: {REWRITTEN_COLOR}; }}
tr.dense td {{ background: {DENSE_COLOR}; }}
.legend span {{ display: inline-block; padding: 2px 8px; margin-right: 8px; border: 1px solid #adb5bd; }}
.pair {{ display: flex; gap: 16px; align-items: flex-start; }}
.graph-column {{ flex: 0 0 auto; max-width: 45%; }}
.graph {{ overflow: auto; max-height: 1400px; border: 1px solid #dee2e6; }}
.masks {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.masks section {{ border: 1px solid #dee2e6; padding: 6px; width: 470px; }}
.masks section p {{ font-size: 0.85em; margin: 0.3em 0; }}
.masks img {{ width: 460px; }}
pre {{ background: #f8f9fa; padding: 8px; overflow: auto; font-size: 0.78em; }}
.add {{ color: #2b8a3e; }} .del {{ color: #c92a2a; }} .hunk {{ color: #1864ab; }}
"""


def _table(inspection: Inspection) -> str:
    cells = inspection.cells()
    if not cells:
        return "<p>No prunable layer was found.</p>"
    header = "".join(f"<th>{escape(name)}</th>" for name in cells[0])
    body = []
    for layer, row in zip(inspection.layers, cells):
        values = [f'<a href="#{anchor(layer.name)}">{escape(row["layer"])}</a>']
        values += [escape(value) for key, value in row.items() if key != "layer"]
        body.append(
            f'<tr class="{layer.row.decision}">'
            + "".join(f"<td>{v}</td>" for v in values)
            + "</tr>"
        )
    return f'<table class="layers"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _inline_svg(svg: str) -> str:
    return svg[svg.index("<svg") :]  # drop the XML declaration and doctype


def _masks(inspection: Inspection, heatmaps: dict[str, bytes]) -> str:
    sections = []
    for layer in inspection.layers:
        row = layer.row
        text = f"{row.op} {row.shape[0]}x{row.shape[1]}, {row.pattern}, kept {row.kept_fraction:.0%}: {row.decision}"
        picture = "<p>(mask not recoverable)</p>"
        if layer.name in heatmaps:
            data = base64.b64encode(heatmaps[layer.name]).decode("ascii")
            picture = f'<img alt="mask of {escape(layer.name)}" src="data:image/png;base64,{data}">'
        sections.append(
            f'<section id="{anchor(layer.name)}" class="layer"><h3>{escape(layer.name)}</h3>'
            f"<p>{escape(text)}<br>{escape(row.reason)}</p>{picture}</section>"
        )
    return f'<div class="masks">{"".join(sections)}</div>'


def _steps(inspection: Inspection) -> str:
    parts, previous = [], None
    for name, code in inspection.compiled.steps:
        state = "unchanged" if code == previous else "changed"
        parts.append(
            f'<details class="step"><summary>after {escape(name)} ({state})</summary>'
            f"<pre>{escape(code.strip())}</pre></details>"
        )
        previous = code
    return "".join(parts)


def _diff(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")
        lines.append(f'<span class="{kind}">{escape(line)}</span>' if kind else escape(line))
    return '<pre class="diff">' + "\n".join(lines) + "</pre>"


def render_page(inspection: Inspection, svg: str, heatmaps: dict[str, bytes]) -> str:
    """The page's HTML text, given the graph's SVG and {layer: heatmap PNG bytes}."""
    title = f"groupsparse inspect: {inspection.title}"
    legend = (
        f'<p class="legend"><span style="background:{REWRITTEN_COLOR}">rewritten: gather + grouped GEMM</span>'
        f'<span style="background:{DENSE_COLOR}">left dense (reason given)</span>'
        "<span>masks: dark = kept, red lines = group boundaries</span></p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="summary">{escape(inspection.summary)}</p>
{legend}
<h2>Layers</h2>
{_table(inspection)}
<div class="pair">
<div class="graph-column"><h2>Rewritten graph</h2>
<div class="graph">{_inline_svg(svg)}</div></div>
<div><h2>Masks on the (M, K) view</h2>
{_masks(inspection, heatmaps)}</div>
</div>
<h2>Graph after each pipeline step</h2>
{_steps(inspection)}
<h2>Diff: captured graph to rewritten graph</h2>
{_diff(inspection.diff)}
</body></html>
"""
