"""The rewritten graph as a drawing: rewritten layers green and annotated with their groups and
kept fraction, layers left dense orange with the reason, other ops plain.

Two engines draw the same nodes and edges to SVG: Graphviz's ``dot`` where it is installed
(with the ``graphviz`` Python package), else a layered layout in pure Python
(``layout.py`` + ``svg.py``, networkx only), so that ``pip install groupsparse[viz]`` is
enough."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

import networkx as nx
import torch
from torch import fx

from ..compiler import ReportRow
from ..passes.common import META_PLAN, META_SKIPPED
from .layout import layout
from .svg import Shape, node_size, render_svg

if TYPE_CHECKING:
    import graphviz

__all__ = [
    "DENSE_COLOR",
    "ENGINES",
    "REWRITTEN_COLOR",
    "anchor",
    "dot_available",
    "drawing",
    "graph_dot",
    "graph_svg",
]

ENGINES = ("auto", "dot", "python")
REWRITTEN_COLOR = "#b9e4c0"
DENSE_COLOR = "#ffd8a8"
_REASON_WIDTH = 48


def anchor(layer: str) -> str:
    """The HTML id of a layer's section: ``layer-features-0``."""
    return "layer-" + re.sub(r"[^A-Za-z0-9_-]", "-", layer)


def _op_label(graph_module: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{node.target}\n{type(graph_module.get_submodule(node.target)).__name__}"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "placeholder":
        return f"input {node.target}"
    if node.op == "output":
        return "output"
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target.name().replace("::", ".")  # groupsparse.conv2d, aten.relu
    return getattr(node.target, "__name__", str(node.target))


def _short(text: str) -> str:
    return text if len(text) <= _REASON_WIDTH else text[: _REASON_WIDTH - 3] + "..."


def _layer_shape(row: ReportRow, op: str) -> Shape:
    if row.decision == "sparse":
        label = (
            f"{row.name}\n{op} ({row.kernel})\n{row.groups} groups x {row.group_size} rows, "
            f"kept {row.kept_fraction:.0%}"
        )
        color = REWRITTEN_COLOR
    else:
        label = f"{row.name}\n{row.op} - dense\n{_short(row.reason)}"
        color = DENSE_COLOR
    return Shape(
        label,
        fill=color,
        rounded=True,
        tooltip=f"{row.name}: {row.decision}; {row.reason}",
        href="#" + anchor(row.name),
    )


def drawing(
    graph_module: fx.GraphModule, rows: Mapping[str, ReportRow]
) -> tuple[dict[str, Shape], list[tuple[str, str]]]:
    """({node name: how it is drawn}, edges) of the graph's data flow, in graph order
    (parameters and plan buffers left out)."""
    shapes: dict[str, Shape] = {}
    edges = []
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            continue
        layer = node.meta.get(META_PLAN) or node.meta.get(META_SKIPPED)
        op = _op_label(graph_module, node)
        if layer is not None and layer.name in rows:
            shapes[node.name] = _layer_shape(rows[layer.name], op.split("\n")[0])
        elif node.op in ("placeholder", "output"):
            shapes[node.name] = Shape(op, shape="ellipse")
        else:
            shapes[node.name] = Shape(op)
        edges += [
            (source.name, node.name) for source in node.all_input_nodes if source.name in shapes
        ]
    return shapes, edges


def graph_dot(graph_module: fx.GraphModule, rows: Mapping[str, ReportRow]) -> graphviz.Digraph:
    """A ``graphviz.Digraph`` of the graph's data flow (parameters and plan buffers left out)."""
    try:
        import graphviz
    except ImportError as error:
        raise ImportError(
            "drawing the graph with dot needs the graphviz package: pip install 'groupsparse[viz]'"
        ) from error

    dot = graphviz.Digraph(
        "groupsparse",
        graph_attr={"rankdir": "TB"},
        node_attr={"fontname": "Helvetica", "fontsize": "10"},
    )
    shapes, edges = drawing(graph_module, rows)
    for name, shape in shapes.items():
        attributes = {"label": shape.label, "shape": shape.shape}
        if shape.fill:
            attributes.update(
                style="filled,rounded" if shape.rounded else "filled", fillcolor=shape.fill
            )
        if shape.href:
            attributes.update(tooltip=shape.tooltip, href=shape.href)
        dot.node(name, **attributes)
    for source, target in edges:
        dot.edge(source, target)
    return dot


def dot_available() -> bool:
    """Whether Graphviz can draw: its ``dot`` program and the graphviz Python package."""
    if shutil.which("dot") is None:
        return False
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return False
    return True


def _python_svg(graph_module: fx.GraphModule, rows: Mapping[str, ReportRow]) -> str:
    shapes, edges = drawing(graph_module, rows)
    graph = nx.DiGraph()
    graph.add_nodes_from(shapes)
    graph.add_edges_from(edges)
    sizes = {name: node_size(shape) for name, shape in shapes.items()}
    return render_svg(shapes, layout(graph, sizes))


def graph_svg(
    graph_module: fx.GraphModule, rows: Mapping[str, ReportRow], engine: str = "auto"
) -> str:
    """The drawing as SVG text. ``engine``: "dot" (Graphviz), "python" (the pure-Python
    layered layout) or "auto" (dot where it is installed, else python)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
    if engine == "auto":
        engine = "dot" if dot_available() else "python"
    if engine == "python":
        return _python_svg(graph_module, rows)
    if shutil.which("dot") is None:
        raise RuntimeError(
            "engine='dot' needs Graphviz's `dot` program (Debian/Ubuntu: apt-get install "
            "graphviz; macOS: brew install graphviz); engine='python' draws without it"
        )
    return graph_dot(graph_module, rows).pipe(format="svg").decode("utf-8")
