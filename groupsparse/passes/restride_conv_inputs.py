"""restride_conv_inputs: a dense conv2d with one input channel gets NCHW strides.

Why: a tensor with one channel has the same bytes in NCHW and NHWC, so its strides can say
either, and torch's CPU convolution (the oneDNN path, torch 2.13) misreads the NHWC-strided
one in some geometries. For a (N, 1, H, W) input with strides (H*W, 1, W, 1), stride 1
down and > 1 across, and an output one pixel wide, it returns partly unwritten memory: the
values change from call to call (``docs/decisions/one-channel-conv.md`` has the standalone
repro). Such tensors come straight from an earlier conv with one output channel run on a
channels_last input. Squeezing the channel out and back in gives the same bytes with NCHW
strides: a view, no copy. The rewritten layers' kernels read any strides; this pass covers
the convs left to torch, so the compiled module computes the masked model's function even
where eager torch does not.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from .common import CONV_FUNCTIONS, CompileContext, constant_value

__all__ = ["restride_conv_inputs"]


def _weight_shape(gm: fx.GraphModule, node: fx.Node, context: CompileContext):
    """The shape of a functional conv's weight argument, where the graph knows it."""
    weight = node.kwargs.get("weight", node.args[1] if len(node.args) > 1 else None)
    value = constant_value(gm, weight, context)
    if value is None and isinstance(weight, fx.Node):
        value = weight.meta.get("val", weight.meta.get("example_value"))
    return None if value is None else tuple(value.shape)


def _one_input_channel(gm: fx.GraphModule, node: fx.Node, context: CompileContext) -> bool:
    """``node`` is a torch 2-D convolution whose input has exactly one channel."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, nn.Conv2d) and module.in_channels == 1
    if node.op != "call_function" or CONV_FUNCTIONS.get(node.target) != 2:
        return False
    shape = _weight_shape(gm, node, context)
    groups = node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
    return shape is not None and isinstance(groups, int) and shape[1] * groups == 1


def restride_conv_inputs(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: every torch conv2d call (module or function) whose input has one channel
    reads it through ``unsqueeze(squeeze(x, -3), -3)``, a view with NCHW strides. Returns
    how many calls were given one."""
    restrided = 0
    for node in list(gm.graph.nodes):
        if not node.args or not isinstance(node.args[0], fx.Node):
            continue
        if not _one_input_channel(gm, node, context):
            continue
        with gm.graph.inserting_before(node):
            squeezed = gm.graph.call_function(torch.squeeze, (node.args[0], -3))
            view = gm.graph.call_function(torch.unsqueeze, (squeezed, -3))
        node.args = (view, *node.args[1:])
        restrided += 1
    return restrided
