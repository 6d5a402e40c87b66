"""normalize_addmm: ``addmm(bias, x, W)`` with a constant W (transformers' Conv1D, as GPT-2's
layers appear in a graph) becomes ``linear(x, t(W), bias)``, so the passes after it see a
linear layer whose (out, in) weight is the transpose of the stored (in, out) parameter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from .common import CompileContext, constant_value

__all__ = ["normalize_addmm"]

_aten = torch.ops.aten
# each addmm, and the transpose and linear that replace it in the same dialect
_ADDMM = {
    torch.addmm: (torch.t, F.linear),
    _aten.addmm.default: (_aten.t.default, _aten.linear.default),
}


def _unscaled(node: fx.Node) -> bool:
    """addmm's optional ``beta`` and ``alpha`` are 1 (``beta * bias + alpha * x @ W``)."""
    scales = [node.kwargs.get(name, 1) for name in ("beta", "alpha")]
    scales += list(node.args[3:5])
    return all(not isinstance(scale, fx.Node) and scale == 1 for scale in scales)


def should_normalize(gm: fx.GraphModule, node: fx.Node, context: CompileContext) -> bool:
    """``node`` is ``addmm(bias, x, W)``, unscaled, with a constant 2-D W of shape (in, out) and
    a constant bias of shape (out,): a linear layer stored transposed."""
    if node.op != "call_function" or node.target not in _ADDMM or len(node.args) < 3:
        return False
    if "out" in node.kwargs or not _unscaled(node):
        return False
    bias, weight = (constant_value(gm, node.args[i], context) for i in (0, 2))
    return (
        weight is not None
        and weight.dim() == 2
        and bias is not None
        and tuple(bias.shape) == (weight.shape[1],)
    )


def normalize_addmm(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: no ``addmm(bias, x, W)`` with a constant (in, out) W and (out,) bias is left;
    each is ``linear(x, t(W), bias)``, which computes the same. Returns how many changed."""
    changed = 0
    for node in list(gm.graph.nodes):
        if not should_normalize(gm, node, context):
            continue
        transpose, linear = _ADDMM[node.target]
        bias, source, weight = node.args[:3]
        with gm.graph.inserting_before(node):
            transposed = gm.graph.call_function(transpose, (weight,))
            replacement = gm.graph.call_function(linear, (source, transposed, bias))
        replacement.meta.update(node.meta)
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        changed += 1
    return changed
