"""Draw a laid-out graph as SVG text, in the shape Graphviz writes it: a ``<g class="node">``
per node holding its ``<title>``, its outline (``polygon``, ``path`` when rounded, ``ellipse``)
and one ``<text>`` per label line, and a ``<g class="edge">`` per edge (a path and an arrow)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from .layout import Layout

__all__ = ["CHAR_WIDTH", "LINE_HEIGHT", "Shape", "node_size", "render_svg"]

FONT = 'font-family="Helvetica,Arial,sans-serif" font-size="10"'
CHAR_WIDTH = 6.0  # Helvetica at 10 px: a generous average advance
LINE_HEIGHT = 12.0
_PADDING = (16.0, 10.0)
_RADIUS = 6.0
_ARROW = 6.0


@dataclass(frozen=True)
class Shape:
    """How one node is drawn."""

    label: str
    shape: str = "box"  # "box" or "ellipse"
    fill: str | None = None  # None: not filled
    rounded: bool = False
    tooltip: str = ""
    href: str = ""


def node_size(shape: Shape) -> tuple[float, float]:
    """(width, height) that fits the label's lines."""
    lines = shape.label.split("\n")
    width = max(len(line) for line in lines) * CHAR_WIDTH + _PADDING[0]
    height = len(lines) * LINE_HEIGHT + _PADDING[1]
    if shape.shape == "ellipse":
        return width * 1.25, height * 1.3
    return width, height


def _outline(shape: Shape, x: float, y: float, width: float, height: float) -> str:
    fill = f'fill="{shape.fill}"' if shape.fill else 'fill="none"'
    if shape.shape == "ellipse":
        return f'<ellipse {fill} stroke="black" cx="{x:.1f}" cy="{y:.1f}" rx="{width / 2:.1f}" ry="{height / 2:.1f}"/>'
    left, top, right, bottom = x - width / 2, y - height / 2, x + width / 2, y + height / 2
    if not shape.rounded:
        points = f"{left:.1f},{top:.1f} {right:.1f},{top:.1f} {right:.1f},{bottom:.1f} {left:.1f},{bottom:.1f}"
        return f'<polygon {fill} stroke="black" points="{points}"/>'
    r = _RADIUS
    path = (
        f"M{left + r:.1f},{top:.1f} H{right - r:.1f} A{r},{r} 0 0 1 {right:.1f},{top + r:.1f} "
        f"V{bottom - r:.1f} A{r},{r} 0 0 1 {right - r:.1f},{bottom:.1f} H{left + r:.1f} "
        f"A{r},{r} 0 0 1 {left:.1f},{bottom - r:.1f} V{top + r:.1f} A{r},{r} 0 0 1 {left + r:.1f},{top:.1f} Z"
    )
    return f'<path {fill} stroke="black" d="{path}"/>'


def _texts(label: str, x: float, y: float) -> str:
    lines = label.split("\n")
    first = y - (len(lines) - 1) * LINE_HEIGHT / 2 + 3.5  # baseline of the first line
    return "".join(
        f'<text text-anchor="middle" x="{x:.1f}" y="{first + index * LINE_HEIGHT:.1f}" {FONT}>'
        f"{escape(line)}</text>"
        for index, line in enumerate(lines)
    )


def _node(index: int, name: str, shape: Shape, x: float, y: float) -> str:
    width, height = node_size(shape)
    body = _outline(shape, x, y, width, height) + _texts(shape.label, x, y)
    if shape.href:
        title = f' xlink:title="{escape(shape.tooltip)}"' if shape.tooltip else ""
        body = f'<a xlink:href="{escape(shape.href)}"{title}>{body}</a>'
    return f'<g id="node{index}" class="node"><title>{escape(name)}</title>{body}</g>'


def _edge(index: int, source: str, target: str, points: list[tuple[float, float]]) -> str:
    *line, (end_x, end_y) = points
    (before_x, before_y) = line[-1]
    length = max(1e-6, ((end_x - before_x) ** 2 + (end_y - before_y) ** 2) ** 0.5)
    ux, uy = (end_x - before_x) / length, (end_y - before_y) / length
    base_x, base_y = end_x - ux * _ARROW, end_y - uy * _ARROW  # the line stops at the arrow
    path = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in [*line, (base_x, base_y)])
    half = _ARROW / 2
    arrow = (
        f"{end_x:.1f},{end_y:.1f} {base_x - uy * half:.1f},{base_y + ux * half:.1f} "
        f"{base_x + uy * half:.1f},{base_y - ux * half:.1f}"
    )
    return (
        f'<g id="edge{index}" class="edge"><title>{escape(source)}&#45;&gt;{escape(target)}</title>'
        f'<path fill="none" stroke="black" d="{path}"/>'
        f'<polygon fill="black" stroke="black" points="{arrow}"/></g>'
    )


def render_svg(shapes: dict[str, Shape], placed: Layout) -> str:
    """The SVG text of the nodes ``shapes`` at ``placed``'s positions, edges under them."""
    edges = [
        _edge(index, source, target, points)
        for index, ((source, target), points) in enumerate(placed.edges.items(), start=1)
    ]
    nodes = [
        _node(index, name, shapes[name], *placed.positions[name])
        for index, name in enumerate(shapes, start=1)
    ]
    width, height = placed.width, placed.height
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{width:.0f}pt" height="{height:.0f}pt" viewBox="0 0 {width:.1f} {height:.1f}">'
        '<g id="graph0" class="graph">'
        f'<polygon fill="white" stroke="none" points="0,0 {width:.1f},0 {width:.1f},{height:.1f} 0,{height:.1f}"/>'
        + "".join(edges)
        + "".join(nodes)
        + "</g></svg>\n"
    )
