"""rewrite_pool: max-pools become groupsparse.max_pool2d calls, native on NCHW CPU tensors.

Not a sparse layer, but in a pruned CNN one of the larger costs left: torch's CPU max-pool
on contiguous NCHW tensors walks each window element by element. VGG-16's five pools take
20.8 ms that way and 3.2 ms on the native kernel, ResNet-50's one 4.0 ms against 0.5 (2
threads; ``tools/bench_layers.py --pools``, benchmarks/experiments/README.md), out of 100-120 ms
for a 75%-sparse VGG-16.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import fx, nn

from .common import CompileContext

__all__ = ["rewrite_pool"]

_POOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d, torch.ops.aten.max_pool2d.default}


def _signature(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):  # fmt: skip
    """F.max_pool2d's parameters, to read a call's arguments by name."""


def _pair(value) -> list[int] | None:
    """An int or a 1- or 2-sequence of ints as [h, w]; None for anything else (a value only
    known at run time: the call is left to torch)."""
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) for v in values):
        return None
    return {1: [*values, *values], 2: list(values)}.get(len(values))


def _arguments(gm: fx.GraphModule, node: fx.Node) -> dict | None:
    """The pool's input and parameters, or None when it is no max-pool we can rewrite."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if not isinstance(module, nn.MaxPool2d) or len(node.args) != 1 or node.kwargs:
            return None
        bound = {
            "input": node.args[0], "kernel_size": module.kernel_size, "stride": module.stride,
            "padding": module.padding, "dilation": module.dilation,
            "ceil_mode": module.ceil_mode, "return_indices": module.return_indices,
        }  # fmt: skip
    elif node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        try:
            bound = inspect.signature(_signature).bind(*node.args, **node.kwargs).arguments
        except TypeError:
            return None
    else:
        return None
    if bound.get("return_indices", False) is not False or not isinstance(bound["input"], fx.Node):
        return None
    kernel = _pair(bound["kernel_size"])
    stride = bound.get("stride")
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    padding, dilation = _pair(bound.get("padding", 0)), _pair(bound.get("dilation", 1))
    ceil_mode = bound.get("ceil_mode", False)
    if None in (kernel, stride, padding, dilation) or not isinstance(ceil_mode, bool):
        return None
    return {"x": bound["input"], "args": (kernel, stride, padding, dilation, ceil_mode)}


def rewrite_pool(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: every 2-D max-pool without indices whose parameters are constants is a
    groupsparse.max_pool2d call (when ``options.native_pooling``). Returns the count."""
    if not context.options.native_pooling:
        return 0
    rewritten = 0
    for node in list(gm.graph.nodes):
        found = _arguments(gm, node)
        if found is None:
            continue
        with gm.graph.inserting_before(node):
            call = gm.graph.call_function(
                torch.ops.groupsparse.max_pool2d.default, (found["x"], *found["args"])
            )
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        rewritten += 1
    return rewritten
