"""One fx pass per file; each a plain function ``(GraphModule, CompileContext) -> result``.
The pipeline (groupsparse.compiler.pipeline) lists them in order; see README.md here for the
``node.meta`` keys each reads and writes."""

from .analyze import LayerStructure, analyze, structure_of
from .cleanup import cleanup
from .common import CompileContext, CompileOptions, PrunableLayer, Refusal
from .find_prunable import SkippedLayer, find_prunable
from .fold_batchnorm import fold_batchnorm
from .fold_permutation import fold_permutation
from .fuse_relu import fuse_relu
from .fuse_residual import fuse_residual
from .normalize_addmm import normalize_addmm
from .plan import LayerPlan, plan
from .prepare_weights import prepare_weights
from .propagate_inputs import propagate_inputs
from .restride_conv_inputs import restride_conv_inputs
from .rewrite_conv import rewrite_conv
from .rewrite_linear import rewrite_linear
from .rewrite_pool import rewrite_pool
from .select_kernel import select_kernel

__all__ = [
    "CompileContext",
    "CompileOptions",
    "LayerPlan",
    "LayerStructure",
    "PrunableLayer",
    "Refusal",
    "SkippedLayer",
    "analyze",
    "cleanup",
    "find_prunable",
    "fold_batchnorm",
    "fold_permutation",
    "fuse_relu",
    "fuse_residual",
    "normalize_addmm",
    "plan",
    "prepare_weights",
    "propagate_inputs",
    "restride_conv_inputs",
    "rewrite_conv",
    "rewrite_linear",
    "rewrite_pool",
    "select_kernel",
    "structure_of",
]
