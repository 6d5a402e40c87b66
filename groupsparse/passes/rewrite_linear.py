"""rewrite_linear: planned linear layers become groupsparse.linear calls."""

from __future__ import annotations

from torch import fx

from .common import CompileContext
from .rewrite import rewrite_planned

__all__ = ["rewrite_linear"]


def rewrite_linear(gm: fx.GraphModule, context: CompileContext) -> list[str]:
    """Guarantees: every linear whose plan says "sparse" is a groupsparse.linear  (or the op of
    the plan's kernel: linear_torch_ops, linear_two_step, linear_loop) call reading its plan from buffers; nothing
    else changes. Returns the layers."""
    return rewrite_planned(gm, "linear", lambda plan: (False, plan.rows, plan.input_width))
