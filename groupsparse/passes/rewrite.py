"""Shared by rewrite_conv and rewrite_linear: swap each planned node of one kind for a
custom-op call whose plan tensors live as buffers of the GraphModule."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import fx

from ..runtime import kernels
from .common import META_PLAN
from .plan import LayerPlan

__all__ = ["buffer_prefix", "replace_with_op", "rewrite_planned"]


def buffer_prefix(gm: fx.GraphModule, name: str) -> str:
    """A fresh attribute-name prefix for a layer's plan buffers: ``groupsparse_features_0``."""
    base = "groupsparse_" + re.sub(r"\W", "_", name)
    prefix, suffix = base, 1
    while hasattr(gm, f"{prefix}_weight"):
        suffix += 1
        prefix = f"{base}_{suffix}"
    return prefix


def _buffer(gm: fx.GraphModule, name: str, tensor: torch.Tensor | None) -> fx.Node | None:
    if tensor is None:
        return None
    gm.register_buffer(name, tensor)
    return gm.graph.get_attr(name)


def replace_with_op(gm: fx.GraphModule, node: fx.Node, op, extra_args: tuple) -> fx.Node:
    """Replace ``node`` by ``op(x, weight, columns, bias, *extra_args[, row_index])``; returns
    the new node."""
    plan: LayerPlan = node.meta[META_PLAN]
    source = node.kwargs.get("input", node.args[0] if node.args else None)
    prefix = buffer_prefix(gm, plan.name)
    with gm.graph.inserting_before(node):
        if plan.cast_input is not None:  # compiled under autocast: cast as autocast would
            source = gm.graph.call_method("to", (source, plan.cast_input))
        weight = _buffer(gm, f"{prefix}_weight", plan.weight)
        columns = _buffer(gm, f"{prefix}_columns", plan.column_index)
        bias = _buffer(gm, f"{prefix}_bias", plan.bias)
        rows = _buffer(gm, f"{prefix}_rows", plan.row_index)  # only for channel-permuted groups
        new = gm.graph.call_function(
            op, (source, weight, columns, bias, *extra_args, *((rows,) if rows is not None else ()))
        )
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def rewrite_planned(
    gm: fx.GraphModule, kind: str, extra_args: Callable[[LayerPlan], tuple]
) -> list[str]:
    """Replace every ``kind`` node whose plan says "sparse" by a call to the op of the plan's
    kernel, with ``extra_args(plan)`` after its plan tensors; returns the layers."""
    rewritten = []
    for node in list(gm.graph.nodes):
        plan = node.meta.get(META_PLAN)
        if plan is None or plan.decision != "sparse" or plan.kind != kind:
            continue
        op = kernels.kernel_of(plan.kernel, kind, plan.weight.device.type).op
        replace_with_op(gm, node, op, extra_args(plan))
        rewritten.append(plan.name)
    return rewritten
