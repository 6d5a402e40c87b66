"""fold_batchnorm: an eval-mode BatchNorm2d right after a rewritten conv is folded into the
conv's packed weights and bias, so conv + BN (+ ReLU) run as one kernel; one after a conv
module left dense (ResNet's first conv) is folded into a copy of that conv's weights."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import fx, nn

from .common import META_PLAN, CompileContext, constant_value

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
    if node.op == "call_function" and node.target is F.batch_norm:
        args = list(node.args) + [None] * 8
        training = node.kwargs.get("training", args[5] if args[5] is not None else False)
        if training:
            return None
        names = ("running_mean", "running_var", "weight", "bias")
        values = [
            constant_value(gm, node.kwargs.get(n, args[i + 1]), context)
            for i, n in enumerate(names)
        ]
        if values[0] is None or values[1] is None:
            return None
        eps = node.kwargs.get("eps", args[7] if args[7] is not None else 1e-5)
        return (*values, eps)
    return None


def _per_kernel_row(
    values: torch.Tensor | None, fill: float, kernel_rows: torch.Tensor, padded: int
) -> torch.Tensor:
    """Per-output-channel values placed at each channel's kernel row (float64; padding = fill)."""
    out = torch.full((padded,), fill, dtype=torch.float64, device=kernel_rows.device)
    if values is not None:
        out[kernel_rows] = values.to(device=kernel_rows.device, dtype=torch.float64)
    return out


def _fold_into_dense(gm: fx.GraphModule, node: fx.Node, context: CompileContext) -> bool:
    """An nn.Conv2d module call (left dense) whose only user is an inference BN becomes an
    F.conv2d on new folded buffers; the user's module is not touched."""
    if node.op != "call_module" or len(node.users) != 1 or len(node.args) != 1 or node.kwargs:
        return False
    conv = gm.get_submodule(node.target)
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    user = next(iter(node.users))
    stats = _batchnorm_stats(gm, user, context)
    if stats is None or user.args[0] is not node:
        return False
    mean, var, gamma, beta = (None if v is None else v.to(torch.float64) for v in stats[:4])
    eps = stats[4]
    scale = (1.0 if gamma is None else gamma) / torch.sqrt(var + eps)
    bias = 0.0 if conv.bias is None else conv.bias.detach().to(torch.float64)
    new_bias = (bias - mean) * scale + (0.0 if beta is None else beta)
    weight = conv.weight.detach().to(torch.float64) * scale.view(-1, 1, 1, 1)
    dtype = conv.weight.dtype
    prefix = "groupsparse_" + str(node.target).replace(".", "_") + "_folded"
    gm.register_buffer(prefix + "_weight", weight.to(dtype).contiguous())
    gm.register_buffer(prefix + "_bias", new_bias.to(dtype).contiguous())
    with gm.graph.inserting_before(node):
        weight_node = gm.graph.get_attr(prefix + "_weight")
        bias_node = gm.graph.get_attr(prefix + "_bias")
        call = gm.graph.call_function(
            F.conv2d,
            (
                node.args[0],
                weight_node,
                bias_node,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
            ),
        )
    call.meta.update(node.meta)
    user.replace_all_uses_with(call)
    gm.graph.erase_node(user)
    gm.graph.erase_node(node)
    return True


def fold_batchnorm(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: no sparse-planned conv2d, and no nn.Conv2d module call that stays dense, is
    followed by an inference BatchNorm2d that is its only user; the plan's weight rows and bias
    (or a folded copy of the dense conv's) absorb the normalization. Returns the count."""
    folded = 0
    for node in list(gm.graph.nodes):
        plan = node.meta.get(META_PLAN)
        dense = plan is None or plan.decision != "sparse"
        if dense and _fold_into_dense(gm, node, context):
            folded += 1
            continue
        plan = node.meta.get(META_PLAN)
        if (
            plan is None
            or plan.decision != "sparse"
            or plan.kind != "conv2d"
            or len(node.users) != 1
        ):
            continue
        user = next(iter(node.users))
        if user.args[0] is not node:
            continue
        stats = _batchnorm_stats(gm, user, context)
        if stats is None:
            continue
        mean, var, gamma, beta, eps = stats
        groups, group_rows, _ = plan.weight.shape
        padded = groups * group_rows
        dtype, device = plan.weight.dtype, plan.weight.device

        kernel_rows = (
            torch.arange(plan.rows, device=device) if plan.row_index is None else plan.row_index
        )
        scale = _per_kernel_row(gamma, 1.0, kernel_rows, padded) / torch.sqrt(
            _per_kernel_row(var, 1.0, kernel_rows, padded) + eps
        )
        bias = (
            _per_kernel_row(None, 0.0, kernel_rows, padded)
            if plan.bias is None
            else plan.bias.to(torch.float64)
        )
        new_bias = (
            bias - _per_kernel_row(mean, 0.0, kernel_rows, padded)
        ) * scale + _per_kernel_row(beta, 0.0, kernel_rows, padded)
        weight = plan.weight.to(torch.float64) * scale.view(groups, group_rows, 1)
        node.meta[META_PLAN] = dataclasses.replace(
            plan,
            weight=weight.to(dtype).contiguous(),
            bias=new_bias.to(dtype).contiguous(),
            reason=plan.reason + "; batch norm folded in",
        )
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        folded += 1
    return folded
