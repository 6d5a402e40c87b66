"""prepare_weights: each rewritten layer's weight buffer laid out as its kernel reads it.

Until here every groupsparse op's weights are the plan's ``(groups, G, k)``, which the passes
that edit them (fold_batchnorm, fold_permutation) read. Some kernels read another layout,
made once here by their registry entry's ``prepare``: the CPU grouped linear's brgemm B per
group (``(groups, k, G)``, VNNI pairs for 16-bit types), the torch-ops linear's k-major
copy. The buffer keeps its name, so state_dict keys do not change.
"""

from __future__ import annotations

from torch import fx

from ..runtime import kernels
from .common import CompileContext

__all__ = ["prepare_weights"]

_WEIGHT = 1  # (x, weight, columns, bias, ...)


def prepare_weights(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: the weight buffer of every groupsparse conv2d/linear call is in its kernel's
    layout (``Kernel.prepare`` of the op's registry entry for the buffer's device). Returns how
    many buffers changed layout."""
    by_op = {}
    for kernel in kernels.KERNELS:
        by_op.setdefault(kernel.op, []).append(kernel)
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in by_op:
            continue
        target = node.args[_WEIGHT]
        if not isinstance(target, fx.Node) or target.op != "get_attr":
            continue
        weight = getattr(gm, str(target.target))
        kernel = next(k for k in by_op[node.target] if k.runs_on(weight.device.type))
        prepared = kernel.prepare(weight)
        if prepared is not weight:
            setattr(gm, str(target.target), prepared)
            changed += 1
    return changed
