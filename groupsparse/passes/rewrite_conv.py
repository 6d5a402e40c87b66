"""rewrite_conv: planned conv2d layers become groupsparse.conv2d calls."""

from __future__ import annotations

from torch import fx

from .common import CompileContext
from .rewrite import rewrite_planned

__all__ = ["rewrite_conv"]


def rewrite_conv(gm: fx.GraphModule, context: CompileContext) -> list[str]:
    """Guarantees: every conv2d whose plan says "sparse" is a groupsparse.conv2d  (or the op of
    the plan's kernel: conv2d_torch_ops, conv2d_two_step, conv2d_loop) call reading its plan from buffers; nothing
    else changes. Returns the layers."""
    return rewrite_planned(
        gm, "conv2d", lambda plan: (list(plan.geometry), False, plan.rows, plan.input_width)
    )
