"""select_kernel: each planned layer's kernel, and whether it is rewritten at all.

With ``decide="time"`` every candidate kernel (the registry's, ``plan`` listed them) and the
dense layer are timed in turns on the layer's example input; the fastest kernel wins, except
that one which cannot fuse the ReLU and shortcut it would get later (``fuse_relu``,
``fuse_residual``) must be ``tuning.fused_epilogue_edge`` times faster bare than one that can;
the layer is rewritten only when that kernel beats dense by ``min_speedup``.
``decide="cost"`` keeps layers whose padded GEMM is at most ``max_kept_fraction`` of the
dense one, on the preferred kernel; ``decide="always"`` rewrites every planned layer.
The plan keeps the (groups, G, k) weights; each kernel's own layout of them
(``Kernel.prepare``) is made for timing here and for the graph by prepare_weights, last.
The per-layer rule, ``decide``, is also how ``gs.sparsify_`` decides each layer.
"""

from __future__ import annotations

import torch
from torch import fx

from ..runtime import kernels, tuning
from ..timing import time_graphs_side_by_side, time_side_by_side
from .common import META_INPUT, META_LAYER, META_PLAN, CompileContext, CompileOptions
from .plan import LayerPlan, dense_call, prepared, sparse_call

__all__ = ["decide", "select_kernel"]


def _timed(plan_: LayerPlan, layer, x: torch.Tensor, options: CompileOptions) -> LayerPlan:
    x = x.to(device=plan_.weight.device, dtype=plan_.weight.dtype)  # dense in the same precision
    calls = {"dense": dense_call(layer, x)}
    calls.update((name, sparse_call(prepared(plan_, name), x)) for name in plan_.candidates)
    timing = time_side_by_side
    if options.cuda_graph and x.device.type == "cuda":
        timing = time_graphs_side_by_side
    with torch.no_grad():
        # in turns, so that a machine that speeds up or slows down moves all alike
        times = timing(calls, options.timing_runs, warmup=2)
    edge = tuning.current().fused_epilogue_edge

    def score(name: str) -> float:
        fuses = kernels.kernel_of(name, plan_.kind, x.device.type).fuses_epilogue
        return times[name] * (1.0 if fuses else edge)

    chosen = min(plan_.candidates, key=score)
    dense_ms, sparse_ms = times["dense"], times[chosen]
    timed = plan_.replaced(kernel=chosen, dense_ms=dense_ms, sparse_ms=sparse_ms)
    speedup = dense_ms / sparse_ms
    if speedup < options.min_speedup:
        return timed.made_dense(
            f"would be slower: {speedup:.2g}x of dense on the example input "
            f"(needs {options.min_speedup:.2f}x)"
        )
    return timed.replaced(reason=f"{speedup:.2f}x faster than dense on the example input")


def decide(plan_: LayerPlan, layer, x: torch.Tensor | None, options: CompileOptions) -> LayerPlan:
    """A "sparse" plan decided per ``options.decide``: kept sparse on one kernel, with the
    reason, or made dense and why; ``x`` (the layer's example input) is timed on for
    ``decide="time"``. compile_sparse (this pass) and sparsify_ decide each layer so."""
    if options.decide == "always":
        return plan_.replaced(reason="rewritten: decide='always'")
    if options.decide == "cost":
        padded_fraction = (
            plan_.groups * plan_.group_size * plan_.kept_columns / (plan_.rows * plan_.columns)
        )
        if padded_fraction > options.max_kept_fraction:
            return plan_.made_dense(
                f"cost model: keeps {padded_fraction:.0%} of the GEMM "
                f"(> {options.max_kept_fraction:.0%})"
            )
        return plan_.replaced(reason=f"cost model: keeps {padded_fraction:.0%} of the GEMM")
    if x is None:
        raise ValueError(f"decide='time' needs an example input for layer {plan_.name!r}")
    return _timed(plan_, layer, x, options)


def select_kernel(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: every plan is "dense" with a reason, or "sparse" with one registry kernel
    that beat dense (per ``options.decide``). Returns how many layers will be rewritten."""
    rewritten = 0
    for node in gm.graph.nodes:
        plan_ = node.meta.get(META_PLAN)
        if plan_ is None or plan_.decision != "sparse":
            continue
        plan_ = decide(plan_, node.meta[META_LAYER], node.meta.get(META_INPUT), context.options)
        node.meta[META_PLAN] = plan_
        rewritten += plan_.decision == "sparse"
    return rewritten
