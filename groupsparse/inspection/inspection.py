"""``gs.inspect(compiled)``: what the compiler did to a model, as a table, the graph after
each pipeline step, a before/after diff, and an HTML page with pictures."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..compiler import SparseModule
from .graph import anchor, graph_svg
from .heatmap import mask_png
from .html import render_page
from .layers import LayerInspection, inspect_layers

__all__ = ["Inspection", "inspect"]


def _si(value: float, unit: str) -> str:
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{prefix}{unit}"
    return f"{value:.0f}{unit}"


def _kept_columns_text(layer: LayerInspection) -> str:
    """``72/288`` (every group keeps 72 of 288 columns), ``60-80/288`` (unbalanced), or ``-``."""
    if layer.row.pattern != "group" or not layer.group_kept:
        return "-"
    low, high = min(layer.group_kept), max(layer.group_kept)
    kept = str(low) if low == high else f"{low}-{high}"
    return f"{kept}/{layer.row.shape[1]}"


def _cells(layer: LayerInspection, timed: bool) -> dict[str, str]:
    row = layer.row
    cells = {
        "layer": row.name,
        "op": row.op,
        "M x K": f"{row.shape[0]}x{row.shape[1]}",
        "pattern": row.pattern,
        "groups": f"{row.groups}x{row.group_size}" if row.pattern == "group" else "-",
        "kept cols/group": _kept_columns_text(layer),
        "kept": f"{row.kept_fraction:.0%}",
        "FLOPs": f"{_si(row.flops_dense, '')} -> {_si(row.flops_sparse, '')}",
        "bytes": f"{_si(layer.bytes_dense, 'B')} -> {_si(layer.bytes_sparse, 'B')}",
        "decision": row.decision if row.decision == "dense" else f"sparse ({row.kernel})",
    }
    if timed:
        cells["dense ms"] = "-" if row.dense_ms is None else f"{row.dense_ms:.3f}"
        cells["sparse ms"] = "-" if row.sparse_ms is None else f"{row.sparse_ms:.3f}"
    cells["reason"] = row.reason
    return cells


class Inspection:
    """What compile_sparse did to a model. Build it with :func:`inspect`.

    - ``layers``: a LayerInspection per prunable layer (mask, kept columns per group, bytes).
    - ``rows`` / ``table``: the per-layer table as dicts / as text.
    - ``graphs``: {pipeline step: graph code after it}, from "capture" to the last pass.
    - ``diff``: unified diff of the graph code, captured -> rewritten.
    - ``to_html(directory)``: the graph as SVG, each mask as a PNG heatmap, and one
      self-contained page tying them together.
    """

    def __init__(self, compiled: SparseModule, layers: list[LayerInspection], title: str) -> None:
        self.compiled = compiled
        self.layers = layers
        self.title = title

    @property
    def timed(self) -> bool:
        """Whether the compiler timed layers dense vs rewritten (``decide="time"``)."""
        return any(layer.row.dense_ms is not None for layer in self.layers)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                **asdict(layer.row),
                "kept_columns_per_group": list(layer.group_kept),
                "bytes_dense": layer.bytes_dense,
                "bytes_sparse": layer.bytes_sparse,
            }
            for layer in self.layers
        ]

    def cells(self) -> list[dict[str, str]]:
        """The table's cells, one dict per layer, in column order."""
        return [_cells(layer, self.timed) for layer in self.layers]

    @property
    def summary(self) -> str:
        report = self.compiled.report
        dense, sparse = report.flops_dense, report.flops_sparse
        ratio = f" ({dense / sparse:.2f}x fewer)" if sparse else ""
        return (
            f"{len(report.rewritten)} of {len(report)} prunable layers rewritten; FLOPs of the prunable "
            f"layers {_si(dense, '')} -> {_si(sparse, '')}{ratio}; captured by {report.capture}"
        )

    @property
    def table(self) -> str:
        cells = self.cells()
        header = list(cells[0]) if cells else ["layer"]
        lines = [header] + [list(row.values()) for row in cells]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        text = [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
            for line in lines
        ]
        text.insert(1, "-" * min(160, max(len(line) for line in text)))
        text.append(self.summary)
        return "\n".join(text)

    @property
    def graphs(self) -> dict[str, str]:
        return dict(self.compiled.steps)

    @property
    def diff(self) -> str:
        (first, before), (last, after) = self.compiled.steps[0], self.compiled.steps[-1]
        lines = difflib.unified_diff(
            before.strip().splitlines(),
            after.strip().splitlines(),
            fromfile=first,
            tofile=last,
            lineterm="",
        )
        return "\n".join(lines)

    def steps_text(self) -> str:
        """The graph after each step under the step's name; "(unchanged)" when a step left it."""
        parts, previous = [], None
        for name, code in self.compiled.steps:
            parts.append(f"--- after {name} ---")
            parts.append("(unchanged)" if code == previous else code.strip())
            previous = code
        return "\n".join(parts)

    def __str__(self) -> str:
        return "\n\n".join(
            [
                f"== layers: {self.title} ==\n{self.table}",
                f"== graph after each step ==\n{self.steps_text()}",
                f"== diff ==\n{self.diff}",
            ]
        )

    def graph_svg(self, engine: str = "auto") -> str:
        """The rewritten graph as SVG: drawn by Graphviz's ``dot`` where it is installed, else
        by the pure-Python layered layout (``engine``: "auto", "dot" or "python")."""
        return graph_svg(
            self.compiled.graph_module, {layer.name: layer.row for layer in self.layers}, engine
        )

    def heatmap_png(self, layer: str) -> bytes:
        """The mask of ``layer`` as a PNG heatmap (M rows x K columns, group boundaries in red)."""
        found = next((item for item in self.layers if item.name == layer), None)
        if found is None:
            raise KeyError(
                f"no layer named {layer!r}; layers: {[item.name for item in self.layers]}"
            )
        if found.mask is None:
            raise ValueError(f"the mask of {layer!r} cannot be recovered from the compiled module")
        row = found.row
        size = row.group_size if row.pattern == "group" else row.shape[0]
        groups = f", {row.groups} groups x {row.group_size} rows" if row.pattern == "group" else ""
        title = f"{row.name}\n{row.pattern}{groups}, kept {row.kept_fraction:.0%}, {row.decision}"
        return mask_png(found.mask, size, title)

    def to_html(self, directory: str | Path, engine: str = "auto") -> Path:
        """Write ``graph.svg``, ``masks/<layer>.png`` and the self-contained ``index.html``
        (SVG inline, PNGs as data URIs) into ``directory``; returns the page's path. Needs
        matplotlib (``pip install groupsparse[viz]``); the graph is drawn as ``graph_svg``
        draws it."""
        directory = Path(directory)
        (directory / "masks").mkdir(parents=True, exist_ok=True)
        svg = self.graph_svg(engine)
        (directory / "graph.svg").write_text(svg, encoding="utf-8")
        heatmaps = {}
        for layer in self.layers:
            if layer.mask is None:
                continue
            heatmaps[layer.name] = self.heatmap_png(layer.name)
            (directory / "masks" / f"{anchor(layer.name)}.png").write_bytes(heatmaps[layer.name])
        page = directory / "index.html"
        page.write_text(render_page(self, svg, heatmaps), encoding="utf-8")
        return page


def inspect(
    compiled: SparseModule, masks: Mapping[str, torch.Tensor] | None = None, title: str = "model"
) -> Inspection:
    """Inspect a model compiled by ``compile_sparse``.

    Args:
        compiled: the SparseModule.
        masks: {parameter or layer name: mask} for the layers left dense; by default their
            weights' zeros. Rewritten layers' masks are rebuilt from their plan buffers.
        title: the model's name in the table and the HTML page.

    Example::

        >>> fast = gs.compile_sparse(model, example, decide="cost")
        >>> seen = gs.inspect(fast)
        >>> print(seen.table)          # per layer: groups, kept columns, FLOPs, bytes, why
        >>> print(seen.diff)           # captured graph -> rewritten graph
        >>> seen.to_html("inspect/")   # graph SVG, mask heatmaps, index.html
    """
    if not isinstance(compiled, SparseModule):
        raise TypeError(
            f"inspect takes the SparseModule from compile_sparse; got {type(compiled).__name__}"
        )
    return Inspection(compiled, inspect_layers(compiled, masks), title)
