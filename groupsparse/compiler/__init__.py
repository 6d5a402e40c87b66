"""compile_sparse(), the torch.compile backend, capture, the pass pipeline and the report."""

from .capture import CaptureError, capture
from .compile import SparseModule, compile_sparse
from .pipeline import PIPELINE, PassError, run_pipeline
from .report import Report, ReportRow

__all__ = [
    "PIPELINE",
    "CaptureError",
    "PassError",
    "Report",
    "ReportRow",
    "SparseModule",
    "capture",
    "compile_sparse",
    "run_pipeline",
]
