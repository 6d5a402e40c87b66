"""groupsparse: a PyTorch compiler that makes pruned conv and linear layers actually faster."""

from .compiler import Report, SparseModule, compile_sparse
from .layers import from_gemm_view, gemm_view, prunable_layers
from .patterns import (
    BlockWise,
    ElementWise,
    FilterWise,
    GroupWise,
    Pattern,
    VectorWise,
    resolve_pattern,
)

__all__ = [
    "BlockWise",
    "ElementWise",
    "FilterWise",
    "GroupWise",
    "Pattern",
    "Report",
    "SparseModule",
    "VectorWise",
    "compile_sparse",
    "from_gemm_view",
    "gemm_view",
    "prunable_layers",
    "resolve_pattern",
]
__version__ = "0.1.0"
