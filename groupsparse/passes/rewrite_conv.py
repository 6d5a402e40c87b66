"""rewrite_conv: planned conv2d layers become groupsparse.conv2d calls."""

from __future__ import annotations

from torch import fx

from .common import META_PLAN, CompileContext
from .plan import kernel_op
from .rewrite import replace_with_op

__all__ = ["rewrite_conv"]


def rewrite_conv(gm: fx.GraphModule, context: CompileContext) -> list[str]:
    """Guarantees: every conv2d whose plan says "sparse" is a groupsparse.conv2d (or
    conv2d_torch, conv2d_loop: the plan's kernel) call reading its plan from buffers; nothing
    else changes. Returns the layers."""
    rewritten = []
    for node in list(gm.graph.nodes):
        plan = node.meta.get(META_PLAN)
        if plan is None or plan.decision != "sparse" or plan.kind != "conv2d":
            continue
        replace_with_op(
            gm,
            node,
            kernel_op("conv2d", plan.kernel),
            (list(plan.geometry), False, plan.rows, plan.input_width),
        )
        rewritten.append(plan.name)
    return rewritten
