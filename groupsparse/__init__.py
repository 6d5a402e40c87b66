"""groupsparse: a PyTorch compiler that makes pruned conv and linear layers actually faster."""

from .compiler import (
    Report,
    SparseLayer,
    SparseModule,
    compile_sparse,
    export_package,
    load_package,
    sparsify_,
    unsparsify_,
)
from .inspection import Inspection, inspect
from .layers import from_gemm_view, gemm_view, layer_kind, prunable_layers
from .patterns import (
    BlockWise,
    ElementWise,
    FilterWise,
    GroupWise,
    Pattern,
    VectorWise,
    resolve_pattern,
)
from .pruning import (
    Criterion,
    Gradual,
    Magnitude,
    OneShot,
    Pruner,
    Random,
    Taylor,
    existing_masks,
    prune,
    resolve_criterion,
)

__all__ = [
    "BlockWise",
    "Criterion",
    "ElementWise",
    "FilterWise",
    "Gradual",
    "GroupWise",
    "Inspection",
    "Magnitude",
    "OneShot",
    "Pattern",
    "Pruner",
    "Random",
    "Report",
    "SparseLayer",
    "SparseModule",
    "Taylor",
    "VectorWise",
    "compile_sparse",
    "existing_masks",
    "export_package",
    "from_gemm_view",
    "gemm_view",
    "inspect",
    "layer_kind",
    "load_package",
    "prunable_layers",
    "prune",
    "resolve_criterion",
    "resolve_pattern",
    "sparsify_",
    "unsparsify_",
]
__version__ = "0.1.0"
