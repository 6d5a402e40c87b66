"""fold_batchnorm: an eval-mode BatchNorm2d right after a rewritten conv is folded into the
conv's packed weights and bias, so conv + BN (+ ReLU) run as one kernel; one after a conv
module left dense (ResNet's first conv) is folded into a copy of that conv's weights."""

from __future__ import annotations

import dataclasses
import inspect
import re

import torch
import torch.nn.functional as F
from torch import fx, nn

from .common import (
    CONV_FUNCTIONS,
    META_LAYER,
    META_PLAN,
    CompileContext,
    constant_value,
    function_layer,
)

__all__ = ["fold_batchnorm"]


def _batchnorm_stats(gm: fx.GraphModule, node: fx.Node, context: CompileContext):
    """(mean, var, gamma, beta, eps) of an inference batch norm node, else None."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if not isinstance(module, nn.BatchNorm2d) or module.training or module.running_mean is None:
            return None
        gamma = module.weight.detach() if module.weight is not None else None
        beta = module.bias.detach() if module.bias is not None else None
        return module.running_mean, module.running_var, gamma, beta, module.eps
    if node.op != "call_function" or node.target not in _BATCH_NORM_FUNCTIONS:
        return None
    try:
        bound = _BATCH_NORM_FUNCTIONS[node.target].bind(*node.args, **node.kwargs).arguments
    except TypeError:
        return None
    if bound.get("training", False) is not False:
        return None
    names = ("running_mean", "running_var", "weight", "bias")
    values = [constant_value(gm, bound.get(name), context) for name in names]
    if values[0] is None or values[1] is None:
        return None
    return (*values, bound.get("eps", 1e-5))


def _functional(input, running_mean, running_var, weight=None, bias=None, training=False,
                momentum=0.1, eps=1e-5):  # fmt: skip
    """F.batch_norm's parameters."""


def _aten(input, weight, bias, running_mean, running_var, training, momentum, eps,
          cudnn_enabled):  # fmt: skip
    """aten.batch_norm's (torch.batch_norm's) parameters: torch.export records this one."""


# every function form of an inference batch norm -> its signature, to read arguments by name
_BATCH_NORM_FUNCTIONS = {
    F.batch_norm: inspect.signature(_functional),
    torch.batch_norm: inspect.signature(_aten),
    torch.ops.aten.batch_norm.default: inspect.signature(_aten),
}


def _per_kernel_row(
    values: torch.Tensor | None, fill: float, kernel_rows: torch.Tensor, padded: int
) -> torch.Tensor:
    """Per-output-channel values placed at each channel's kernel row (float64; padding = fill)."""
    out = torch.full((padded,), fill, dtype=torch.float64, device=kernel_rows.device)
    if values is not None:
        out[kernel_rows] = values.to(device=kernel_rows.device, dtype=torch.float64)
    return out


def _scale_and_bias(
    stats, bias: torch.Tensor | None, kernel_rows: torch.Tensor, padded: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(conv + bias) = conv * scale + new_bias: (scale, new_bias) per kernel row, float64.
    ``bias`` is already in kernel-row order (or None)."""
    mean, var, gamma, beta, eps = stats

    def place(values: torch.Tensor | None, fill: float) -> torch.Tensor:
        return _per_kernel_row(values, fill, kernel_rows, padded)

    scale = place(gamma, 1.0) / torch.sqrt(place(var, 1.0) + eps)
    bias = place(None, 0.0) if bias is None else bias.to(torch.float64)
    return scale, (bias - place(mean, 0.0)) * scale + place(beta, 0.0)


def _only_batchnorm_user(gm: fx.GraphModule, node: fx.Node, context: CompileContext):
    """(the BN node, its stats) when ``node``'s only user is an inference BN of it, else None."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.args[0] is not node:
        return None
    stats = _batchnorm_stats(gm, user, context)
    return None if stats is None else (user, stats)


def _fold_into_plan(gm: fx.GraphModule, node: fx.Node, context: CompileContext) -> bool:
    """A sparse-planned conv's plan absorbs the BN after it (weight rows and bias)."""
    plan = node.meta[META_PLAN]
    found = _only_batchnorm_user(gm, node, context) if plan.kind == "conv2d" else None
    if found is None:
        return False
    user, stats = found
    groups, group_rows, _ = plan.weight.shape
    device = plan.weight.device
    kernel_rows = (
        torch.arange(plan.rows, device=device) if plan.row_index is None else plan.row_index
    )
    scale, bias = _scale_and_bias(stats, plan.bias, kernel_rows, groups * group_rows)
    weight = plan.weight.to(torch.float64) * scale.view(groups, group_rows, 1)
    node.meta[META_PLAN] = dataclasses.replace(
        plan,
        weight=weight.to(plan.weight.dtype).contiguous(),
        bias=bias.to(plan.weight.dtype).contiguous(),
        reason=plan.reason + "; batch norm folded in",
    )
    user.replace_all_uses_with(node)
    gm.graph.erase_node(user)
    return True


def _dense_conv(gm: fx.GraphModule, node: fx.Node, context: CompileContext):
    """(input, weight, bias, stride, padding, dilation, groups) of a conv2d left to torch, a
    module call or a function call on constant weights, where its BN can be folded in; else
    None."""
    if node.op == "call_module":
        conv = gm.get_submodule(node.target)
        if (len(node.args) != 1 or node.kwargs or type(conv) is not nn.Conv2d
                or conv.padding_mode != "zeros" or isinstance(conv.padding, str)):  # fmt: skip
            return None
        bias = None if conv.bias is None else conv.bias.detach()
        return (node.args[0], conv.weight.detach(), bias, conv.stride, conv.padding,
                conv.dilation, conv.groups)  # fmt: skip
    if node.op != "call_function" or CONV_FUNCTIONS.get(node.target) != 2:
        return None
    layer = node.meta.get(META_LAYER) or function_layer(gm, node, context)  # excluded: unmarked
    if layer is None:
        return None
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros" or layer.transposed:
        return None
    source = node.kwargs.get("input", node.args[0] if node.args else None)
    return (source, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation,
            layer.groups)  # fmt: skip


def _fold_into_dense(gm: fx.GraphModule, node: fx.Node, context: CompileContext) -> bool:
    """A conv2d left dense (an nn.Conv2d module call, or a conv function on constant weights:
    torch.export's graphs) whose only user is an inference BN becomes an F.conv2d on new
    folded buffers; the user's module and weights are not touched."""
    conv = _dense_conv(gm, node, context)
    found = None if conv is None else _only_batchnorm_user(gm, node, context)
    if found is None:
        return False
    source, conv_weight, conv_bias, stride, padding, dilation, groups = conv
    user, stats = found
    channels = conv_weight.shape[0]
    rows = torch.arange(channels, device=conv_weight.device)
    scale, new_bias = _scale_and_bias(stats, conv_bias, rows, channels)
    weight = conv_weight.to(torch.float64) * scale.view(-1, 1, 1, 1)
    dtype = conv_weight.dtype
    prefix = "groupsparse_" + re.sub(r"\W", "_", _name(node)) + "_folded"
    gm.register_buffer(prefix + "_weight", weight.to(dtype).contiguous())
    gm.register_buffer(prefix + "_bias", new_bias.to(dtype).contiguous())
    with gm.graph.inserting_before(node):
        weight_node = gm.graph.get_attr(prefix + "_weight")
        bias_node = gm.graph.get_attr(prefix + "_bias")
        args = (source, weight_node, bias_node, tuple(stride), tuple(padding), tuple(dilation))
        call = gm.graph.call_function(F.conv2d, (*args, groups))
    call.meta.update(node.meta)
    user.replace_all_uses_with(call)
    gm.graph.erase_node(user)
    gm.graph.erase_node(node)
    return True


def _name(node: fx.Node) -> str:
    layer = node.meta.get(META_LAYER)
    return (
        layer.name
        if layer is not None
        else str(node.target if node.op == "call_module" else node.name)
    )


def fold_batchnorm(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: no sparse-planned conv2d, and no dense conv2d on constant weights (module or
    function call), is followed by an inference batch norm (module, F.batch_norm or aten's)
    that is its only user; the plan's weight rows and bias (or a folded copy of the dense
    conv's) absorb the normalization. Returns the count."""
    folded = 0
    for node in list(gm.graph.nodes):
        plan = node.meta.get(META_PLAN)
        if plan is not None and plan.decision == "sparse":
            folded += _fold_into_plan(gm, node, context)
        else:
            folded += _fold_into_dense(gm, node, context)
    return folded
