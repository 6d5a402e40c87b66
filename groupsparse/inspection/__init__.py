"""Inspection: see what the compiler did to a model, layer by layer and as a picture.

``gs.inspect(compiled)`` returns an :class:`Inspection` with the per-layer table (groups,
kept columns, FLOPs, bytes, decision and why), the graph after each pipeline step, a
before/after diff, and ``to_html(dir)`` for the graph as SVG and the masks as heatmaps.
The ``groupsparse inspect`` command is a thin layer over it."""

from .inspection import Inspection, inspect
from .layers import LayerInspection

__all__ = ["Inspection", "LayerInspection", "inspect"]
