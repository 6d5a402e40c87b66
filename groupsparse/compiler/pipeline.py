"""The pass pipeline: a straight list of named steps, each with why it is there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx

from ..passes import (
    CompileContext,
    analyze,
    cleanup,
    find_prunable,
    fold_batchnorm,
    fold_permutation,
    fuse_relu,
    fuse_residual,
    normalize_addmm,
    plan,
    prepare_weights,
    propagate_inputs,
    restride_conv_inputs,
    rewrite_conv,
    rewrite_linear,
    rewrite_pool,
    select_kernel,
)

__all__ = ["PIPELINE", "PassError", "run_pipeline"]

PIPELINE: tuple[tuple[str, Callable[[fx.GraphModule, CompileContext], Any]], ...] = (
    ("normalize_addmm", normalize_addmm),  # Conv1D's addmm(b, x, W) is linear(x, W.t(), b)
    ("find_prunable", find_prunable),  # which calls are conv/linear with weights we can read
    ("propagate_inputs", propagate_inputs),  # each layer's real input: shapes, dtype, timing data
    ("analyze", analyze),  # the structure in each mask: group size and kept columns
    ("plan", plan),  # pack weights once; the kernels that could run each layer
    ("select_kernel", select_kernel),  # time them against dense: which kernel, or dense
    ("fold_batchnorm", fold_batchnorm),  # an inference BN after a rewritten conv joins its weights
    ("rewrite_conv", rewrite_conv),  # conv2d -> groupsparse.conv2d
    ("rewrite_linear", rewrite_linear),  # linear -> groupsparse.linear
    ("fuse_relu", fuse_relu),  # a following ReLU runs in the kernel's epilogue
    ("fold_permutation", fold_permutation),  # permuted rows stay permuted for the next layer
    ("fuse_residual", fuse_residual),  # a shortcut add (+ ReLU) runs in the conv's epilogue
    ("rewrite_pool", rewrite_pool),  # max-pools on the native NCHW kernel (torch's is slow)
    ("restride_conv_inputs", restride_conv_inputs),  # torch misreads 1-channel NHWC strides
    ("prepare_weights", prepare_weights),  # each kernel's weight layout, once
    ("cleanup", cleanup),  # the replaced weights and modules are dropped
)


class PassError(RuntimeError):
    """A pass failed; the message names the pass and, where known, the node."""


def run_pipeline(
    gm: fx.GraphModule,
    context: CompileContext,
    on_step: Callable[[str, fx.GraphModule, Any], None] | None = None,
) -> fx.GraphModule:
    """Run every pass in order, linting and recompiling after each."""
    for name, run in PIPELINE:
        try:
            result = run(gm, context)
        except PassError:
            raise
        except Exception as error:
            raise PassError(f"An error occurred in pass {name!r}: {error}") from error
        gm.graph.lint()
        gm.recompile()
        if on_step is not None:
            on_step(name, gm, result)
    return gm
