"""fuse_relu: a ReLU that is the only user of a rewritten layer runs inside its kernel."""

from __future__ import annotations

from torch import fx

from ..runtime.kernels import argument_index, op_kinds
from .common import CompileContext, is_relu

__all__ = ["fuse_relu"]


def _relu_position() -> dict:
    """Every groupsparse op (all kernels) -> where its ``relu`` flag is."""
    return {op: argument_index(op, "relu") for op in op_kinds()}


def fuse_relu(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: no groupsparse op is followed by a ReLU that is its only user (when
    ``options.fuse_relu``); the ReLU's users read the op's output instead. Returns the count."""
    if not context.options.fuse_relu:
        return 0
    positions = _relu_position()
    fused = 0
    for node in list(gm.graph.nodes):
        position = positions.get(node.target)
        if position is None or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if not is_relu(gm, user) or user.args[0] is not node:
            continue
        args = list(node.args)
        args[position] = True
        node.args = tuple(args)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        fused += 1
    return fused
