"""compile_sparse(), sparsify_(), the torch.compile backend, capture, the pass pipeline and the
report."""

from .capture import CaptureError, capture
from .compile import SparseModule, compile_sparse
from .package import export_package, load_package
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
    "export_package",
    "load_package",
    "run_pipeline",
    "sparse_layers",
    "sparsify_",
    "unsparsify_",
]
