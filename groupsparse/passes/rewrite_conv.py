"""rewrite_conv: planned conv2d layers become groupsparse.conv2d calls."""

from __future__ import annotations

from torch import fx

from ..runtime import kernels
from .common import META_PLAN, CompileContext
from .rewrite import replace_with_op

__all__ = ["rewrite_conv"]


def rewrite_conv(gm: fx.GraphModule, context: CompileContext) -> list[str]:
    """Guarantees: every conv2d whose plan says "sparse" is a groupsparse.conv2d  (or the op of
    the plan's kernel: conv2d_torch_ops, conv2d_two_step, conv2d_loop) call reading its plan from buffers; nothing
    else changes. Returns the layers."""
    rewritten = []
    for node in list(gm.graph.nodes):
        plan = node.meta.get(META_PLAN)
        if plan is None or plan.decision != "sparse" or plan.kind != "conv2d":
            continue
        replace_with_op(
            gm,
            node,
            kernels.kernel_of(plan.kernel, "conv2d", plan.weight.device.type).op,
            (list(plan.geometry), False, plan.rows, plan.input_width),
        )
        rewritten.append(plan.name)
    return rewritten
