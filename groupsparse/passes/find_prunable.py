"""find_prunable: mark every conv/linear call of the graph whose weight is a constant."""

from __future__ import annotations

import fnmatch

from torch import fx

from .common import (
    CONV_FUNCTIONS,
    LINEAR_FUNCTIONS,
    META_LAYER,
    CompileContext,
    function_layer,
    module_layer,
)

__all__ = ["find_prunable"]


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def find_prunable(gm: fx.GraphModule, context: CompileContext) -> list[fx.Node]:
    """Guarantees: each nn.Conv*d/nn.Linear call and each functional conv/linear call with a
    constant weight (get_attr, lifted parameter, or weight_orig*weight_mask) carries a
    PrunableLayer in ``node.meta[META_LAYER]``, unless its name is excluded. Returns them."""
    found = []
    for node in gm.graph.nodes:
        layer = None
        if node.op == "call_module":
            layer = module_layer(str(node.target), gm.get_submodule(node.target))
        elif node.op == "call_function" and (
            node.target in CONV_FUNCTIONS or node.target in LINEAR_FUNCTIONS
        ):
            layer = function_layer(gm, node, context)
        if layer is None or _excluded(layer.name, context.exclude):
            continue
        node.meta[META_LAYER] = layer
        found.append(node)
    return found
