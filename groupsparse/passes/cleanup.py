"""cleanup: drop what the rewrite left unused - dead nodes, modules and parameters."""

from __future__ import annotations

from torch import fx

from .common import CompileContext

__all__ = ["cleanup"]


def cleanup(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: no dead node (other than placeholders) and no submodule that no node uses.
    Returns how many nodes were removed."""
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    return before - len(gm.graph.nodes)
