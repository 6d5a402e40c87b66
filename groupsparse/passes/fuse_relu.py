"""fuse_relu: a ReLU that is the only user of a rewritten layer runs inside its kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..runtime.ops import ARGUMENT_POSITIONS, overloads
from .common import CompileContext

__all__ = ["fuse_relu"]

_RELU_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    F.relu,
    torch.ops.aten.relu.default,
    torch.ops.aten.relu_.default,
}


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    return False


def _relu_position() -> dict:
    """Every groupsparse op (all kernels) -> where its ``relu`` flag is."""
    return {op: ARGUMENT_POSITIONS[kind]["relu"] for op, kind in overloads().items()}


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
        if not _is_relu(gm, user) or user.args[0] is not node:
            continue
        args = list(node.args)
        args[position] = True
        node.args = tuple(args)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        fused += 1
    return fused
