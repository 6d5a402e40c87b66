"""The rewritten graph as a Graphviz drawing: rewritten layers green and annotated with their
groups and kept fraction, layers left dense orange with the reason, other ops plain.

Needs the ``graphviz`` Python package (``pip install groupsparse[viz]``) and, to render,
Graphviz's ``dot`` program (Debian: ``apt-get install graphviz``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import fx

from ..compiler import ReportRow
from ..passes.common import META_PLAN, META_SKIPPED

if TYPE_CHECKING:
    import graphviz

__all__ = ["DENSE_COLOR", "REWRITTEN_COLOR", "anchor", "graph_dot", "graph_svg"]

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


def _layer_attributes(row: ReportRow, op: str) -> dict[str, str]:
    if row.decision == "sparse":
        label = (
            f"{row.name}\n{op} ({row.kernel})\n{row.groups} groups x {row.group_size} rows, "
            f"kept {row.kept_fraction:.0%}"
        )
        color = REWRITTEN_COLOR
    else:
        label = f"{row.name}\n{row.op} - dense\n{_short(row.reason)}"
        color = DENSE_COLOR
    return {
        "label": label,
        "shape": "box",
        "style": "filled,rounded",
        "fillcolor": color,
        "tooltip": f"{row.name}: {row.decision}; {row.reason}",
        "href": "#" + anchor(row.name),
    }


def graph_dot(graph_module: fx.GraphModule, rows: Mapping[str, ReportRow]) -> graphviz.Digraph:
    """A ``graphviz.Digraph`` of the graph's data flow (parameters and plan buffers left out)."""
    try:
        import graphviz
    except ImportError as error:
        raise ImportError(
            "drawing the graph needs the graphviz package: pip install 'groupsparse[viz]'"
        ) from error

    dot = graphviz.Digraph(
        "groupsparse",
        graph_attr={"rankdir": "TB"},
        node_attr={"fontname": "Helvetica", "fontsize": "10"},
    )
    drawn = set()
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            continue
        layer = node.meta.get(META_PLAN) or node.meta.get(META_SKIPPED)
        op = _op_label(graph_module, node)
        if layer is not None and layer.name in rows:
            attributes = _layer_attributes(rows[layer.name], op.split("\n")[0])
        elif node.op in ("placeholder", "output"):
            attributes = {"label": op, "shape": "ellipse"}
        else:
            attributes = {"label": op, "shape": "box"}
        dot.node(node.name, **attributes)
        drawn.add(node.name)
        for source in node.all_input_nodes:
            if source.name in drawn:
                dot.edge(source.name, node.name)
    return dot


def graph_svg(graph_module: fx.GraphModule, rows: Mapping[str, ReportRow]) -> str:
    """The drawing as SVG text (runs Graphviz's ``dot``)."""
    return graph_dot(graph_module, rows).pipe(format="svg").decode("utf-8")
