"""compile_sparse(), sparsify_(), the torch.compile backend, capture, the pass pipeline and the
report."""

from .capture import CaptureError, capture
from .compile import SparseModule, compile_sparse
from .pipeline import PIPELINE, PassError, run_pipeline
from .report import Report, ReportRow
from .sparsify import SparseLayer, sparse_layers, sparsify_, unsparsify_

__all__ = [
    "PIPELINE",
    "CaptureError",
    "PassError",
    "Report",
    "ReportRow",
    "SparseLayer",
    "SparseModule",
    "capture",
    "compile_sparse",
    "run_pipeline",
    "sparse_layers",
    "sparsify_",
    "unsparsify_",
]
