"""fuse_residual: a shortcut add after a rewritten conv (and the ReLU after it) runs in the
conv's epilogue, as in every ResNet block: ``relu(bn3(conv3(x)) + identity)``.

The add is the conv's only user; the other operand is computed earlier in the graph (so the
conv can read it when it runs). The op adds it before its ReLU, in the kernel's store
epilogue where shapes and dtypes match, else as torch's add would: the result is the graph's.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..runtime.kernels import argument_index, op_kinds
from .common import CompileContext, is_relu

__all__ = ["fuse_residual"]

_ADDS = {
    operator.add,
    operator.iadd,
    torch.add,
    torch.ops.aten.add.Tensor,
    torch.ops.aten.add_.Tensor,
}
# these write into their first operand: the conv there can take the other as its residual (the
# add's result, which the conv's output now is, is that operand's new value); a conv second
# only when nothing else reads the first operand (its new value lives on as the add's result)
_IN_PLACE = {operator.iadd, torch.ops.aten.add_.Tensor}


def _conv_taking_residual(node: fx.Node, other, order: dict[fx.Node, int]) -> bool:
    """``node`` is a conv op whose only user is the add, with no ReLU or residual yet, and
    ``other`` is a tensor node that exists before it."""
    if op_kinds().get(node.target) != "conv2d" or len(node.users) != 1:
        return False
    relu, residual = argument_index(node.target, "relu"), argument_index(node.target, "residual")
    args = node.args
    if args[relu] or (len(args) > residual and args[residual] is not None):
        return False
    return isinstance(other, fx.Node) and order.get(other, len(order)) < order[node]


def fuse_residual(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: no groupsparse conv (without a ReLU) has an add of an earlier tensor as its
    only user (when ``options.fuse_relu``, which also governs this fusion); that add, and a ReLU
    that is the add's only user, run in the conv. Returns the count."""
    if not context.options.fuse_relu:
        return 0
    fused = 0
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    for add in list(gm.graph.nodes):
        if add.op != "call_function" or add.target not in _ADDS or add.kwargs or len(add.args) != 2:
            continue
        left, right = add.args
        swappable = add.target not in _IN_PLACE or (
            isinstance(left, fx.Node) and len(left.users) == 1
        )
        orders = ((left, right), (right, left)) if swappable else ((left, right),)
        for conv, other in orders:
            if isinstance(conv, fx.Node) and _conv_taking_residual(conv, other, order):
                break
        else:
            continue
        residual = argument_index(conv.target, "residual")
        args = list(conv.args) + [None] * (residual + 1 - len(conv.args))
        args[residual] = other
        result = add
        if len(add.users) == 1 and is_relu(gm, next(iter(add.users))):
            relu = next(iter(add.users))
            if relu.args[0] is add:
                args[argument_index(conv.target, "relu")] = True
                result = relu
        conv.args = tuple(args)
        result.replace_all_uses_with(conv)
        if result is not add:
            gm.graph.erase_node(result)
        gm.graph.erase_node(add)
        fused += 1
    return fused
