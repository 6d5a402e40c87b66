"""rewrite_linear: planned linear layers become groupsparse.linear calls."""

from __future__ import annotations

from torch import fx

from ..runtime import kernels
from .common import META_PLAN, CompileContext
from .rewrite import replace_with_op

__all__ = ["rewrite_linear"]


def rewrite_linear(gm: fx.GraphModule, context: CompileContext) -> list[str]:
    """Guarantees: every linear whose plan says "sparse" is a groupsparse.linear  (or the op of
    the plan's kernel: linear_torch_ops, linear_two_step, linear_loop) call reading its plan from buffers; nothing
    else changes. Returns the layers."""
    rewritten = []
    for node in list(gm.graph.nodes):
        plan = node.meta.get(META_PLAN)
        if plan is None or plan.decision != "sparse" or plan.kind != "linear":
            continue
        replace_with_op(
            gm,
            node,
            kernels.kernel_of(plan.kernel, "linear", plan.weight.device.type).op,
            (False, plan.rows, plan.input_width),
        )
        rewritten.append(plan.name)
    return rewritten
