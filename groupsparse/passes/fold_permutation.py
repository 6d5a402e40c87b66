"""fold_permutation: a channel-permuted layer feeding another rewritten layer leaves its
output in kernel order, and the next layer reads its columns from there.

A layer pruned with ``Group(permute=True)`` groups rows that are not neighbours; its kernel
computes the rows group by group, and the op puts them back in order with one index_select on
the output (its ``row_index``). When the output reaches a rewritten layer only through
channel-wise ops (ReLU, GELU, dropout, pooling), that next layer can read each input channel
from where the kernel left it instead: its kept columns are renumbered at compile time, and
the index_select is gone. The permutation then costs nothing at run time.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..runtime.kernels import argument_index, op_kinds
from .common import META_PLAN, CompileContext

__all__ = ["fold_permutation"]

# ops that act on each channel alone, in either layout (channel dim 1 or last)
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.dropout,
    torch.ops.aten.relu.default, torch.ops.aten.gelu.default, torch.ops.aten.silu.default,
    torch.ops.aten.dropout.default, torch.ops.aten.clone.default,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
_ELEMENTWISE_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity)
# ops that act on each channel of an (N, C, H, W) tensor alone
_POOL_FUNCTIONS = {
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    torch.ops.aten.max_pool2d.default, torch.ops.aten.avg_pool2d.default,
    torch.ops.aten.adaptive_avg_pool2d.default,
}  # fmt: skip
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

# argument positions of the groupsparse ops: (x, weight, columns, bias, ...)
_WEIGHT, _COLUMNS = 1, 2


def _ops() -> dict:
    """Every groupsparse op (all kernels) -> (position of row_index, is conv)."""
    return {
        op: (argument_index(op, "row_index"), kind == "conv2d") for op, kind in op_kinds().items()
    }


def _channelwise(gm: fx.GraphModule, node: fx.Node, conv: bool) -> bool:
    """``node`` maps each channel of its first argument to the same channel of its output."""
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS or (conv and node.target in _POOL_FUNCTIONS)
    if node.op == "call_method":
        return node.target in _ELEMENTWISE_METHODS
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, _ELEMENTWISE_MODULES) or (
            conv and isinstance(module, _POOL_MODULES)
        )
    return False


def _consumer(gm: fx.GraphModule, node: fx.Node, conv: bool, ops: dict) -> fx.Node | None:
    """The rewritten layer that alone reads ``node``'s output through channel-wise ops, if any."""
    current = node
    while len(current.users) == 1:
        user = next(iter(current.users))
        if not user.args or user.args[0] is not current:
            return None
        if user.target in ops:
            # a conv's channels are dim 1, a linear's features the last dim: same kind only
            return user if ops[user.target][1] == conv else None
        if not _channelwise(gm, user, conv) or any(a is current for a in user.args[1:]):
            return None
        current = user
    return None


def _attr(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    return getattr(gm, node.target)


def _renumber(
    columns: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, taps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns that read input channel c read kernel row rows[c]; each group's columns sorted
    again (the gather reads the input in order) and the weight's columns with them."""
    channel, tap = columns // taps, columns % taps
    renumbered = rows[channel] * taps + tap
    renumbered, order = renumbered.sort(dim=1)
    # the weight keeps its layout (a linear plan's is k-major)
    reordered = torch.empty_like(weight).copy_(
        weight.gather(2, order[:, None, :].expand_as(weight))
    )
    return renumbered.contiguous(), reordered


def _refusal(gm: fx.GraphModule, node: fx.Node, row_position: int, consumer: fx.Node | None) -> str:
    """Why the permutation of ``node`` cannot fold into ``consumer`` ("" when it can)."""
    if consumer is None:
        return "the output does not reach one rewritten layer through channel-wise ops"
    rows, weight = _attr(gm, node.args[row_position]), _attr(gm, node.args[_WEIGHT])
    columns_node, weight_node = consumer.args[_COLUMNS], consumer.args[_WEIGHT]
    if any(t is None for t in (rows, weight, _attr(gm, columns_node), _attr(gm, weight_node))):
        return "its plan is not held in buffers"
    if weight.shape[0] * weight.shape[1] != rows.numel():
        return "a smaller last group pads the kernel's rows, so the output would change width"
    if len(columns_node.users) != 1 or len(weight_node.users) != 1:
        return "the next layer shares its buffers with another call"
    return ""


def fold_permutation(gm: fx.GraphModule, context: CompileContext) -> list[str]:
    """Guarantees: a channel-permuted layer whose output only reaches one rewritten layer of its
    kind through channel-wise ops has no run-time index_select; that layer reads the kernel's
    order instead (same numbers). Returns the folded layers."""
    ops = _ops()
    folded = []
    for node in list(gm.graph.nodes):
        if node.target not in ops:
            continue
        row_position, conv = ops[node.target]
        if len(node.args) <= row_position or node.args[row_position] is None:
            continue
        consumer = _consumer(gm, node, conv, ops)
        refusal = _refusal(gm, node, row_position, consumer)
        plan = node.meta.get(META_PLAN)
        if refusal:
            if plan is not None:
                node.meta[META_PLAN] = dataclasses.replace(
                    plan, reason=f"{plan.reason}; rows put back in order at run time ({refusal})"
                )
            continue
        row_node = node.args[row_position]
        rows = _attr(gm, row_node)
        columns_node, weight_node = consumer.args[_COLUMNS], consumer.args[_WEIGHT]
        taps = consumer.args[4][0] * consumer.args[4][1] if conv else 1
        columns = _attr(gm, columns_node)
        new_columns, new_weight = _renumber(
            columns, _attr(gm, weight_node), rows.to(columns.device), taps
        )
        setattr(gm, columns_node.target, new_columns)
        setattr(gm, weight_node.target, new_weight)
        node.args = node.args[:row_position]
        if not row_node.users:
            gm.graph.erase_node(row_node)
            delattr(gm, row_node.target)
        consumer_plan = consumer.meta.get(META_PLAN)
        consumer_name = consumer_plan.name if consumer_plan is not None else consumer.name
        if consumer_plan is not None:  # inspection maps the columns back with it
            consumer.meta[META_PLAN] = dataclasses.replace(consumer_plan, input_rows=rows.clone())
        if plan is not None:
            node.meta[META_PLAN] = dataclasses.replace(
                plan, reason=f"{plan.reason}; channel permutation folded into {consumer_name}"
            )
        folded.append(plan.name if plan is not None else node.name)
    return folded
