"""CUDA kernels for group-sparse layers, on cuda-python (NVRTC, driver API) and cuBLAS
through nvmath-python's bindings. The only module of groupsparse that imports either; both
are imported inside functions, so ``import groupsparse.runtime.cuda`` works on a machine with
neither and with no GPU.

Two grouped kernels, as on the CPU (the compiler times both per layer and keeps the faster):

- ``grouped_conv2d`` / ``grouped_linear``: where Triton is installed (it comes with torch's
  CUDA builds), one fused Triton kernel per layer that gathers each group's kept columns into
  registers and multiplies them there (``triton_fused.py``, which says why); else the next.
- ``two_step_conv2d`` / ``two_step_linear``: the paper's two steps, below.

A two-step call is (semantics as the ops': ``runtime/ops.py``):

1. one gather kernel (NVRTC-compiled, cached per device and dtype, launched on torch's current
   stream) that writes each group's kept im2col rows contiguously;
2. one cuBLAS call that computes every group's product for every image, writing straight into
   the output tensor: ``cublasGemmStridedBatchedEx`` when one stride reaches every problem
   (linear layers, convolutions of one image), otherwise ``cublasGemmGroupedBatchedEx`` with
   device pointer arrays (a convolution over several images: the weight repeats per image, so
   no single stride walks it); float16/bfloat16 accumulate in float32, float32 uses TF32 only
   when ``torch.backends.cuda.matmul.allow_tf32`` is set;
3. a bias + ReLU kernel, only when the layer has a bias or a fused ReLU.

cuBLAS is column-major and torch row-major; how each layer maps onto cuBLAS's arguments
(m, n, k, leading dimensions, transposes, per-problem offsets) is computed by the pure
functions ``conv_strided_gemm``, ``conv_grouped_gemm`` and ``linear_gemm``, which import
nothing of CUDA and are tested on the CPU against an interpreter of cuBLAS's semantics.

Everything a call needs beyond its tensors (compiled kernels, cuBLAS handle, workspace, index
tables, GEMM offsets, pointer-array buffers) is built on the first call for a given layer and
input shape and then reused, so the second call launches work only and can be captured in a
CUDA graph. A first call made while a graph is being captured raises: call the model once
before capturing, as ``torch.cuda.graphs`` asks anyway.

Example::

    >>> ok, reason = cuda_available()
    >>> if ok:
    ...     layer = SparseWeights(weight.cuda().half(), columns.cuda())
    ...     out = grouped_linear(x.cuda().half(), layer, relu=False)
"""

from __future__ import annotations

from . import host
from .driver import (  # the underscored three: tests/cuda reach in
    _RUNTIME,  # noqa: F401
    _check_driver,  # noqa: F401
    _run_gemm,  # noqa: F401
    clear_caches,
    compile_kernels,
    cuda_available,
    dtype_name,
)
from .fused import ELEMENT_DTYPES, fused_ready, fused_runner, grouped_conv2d, grouped_linear
from .host import *
from .two_step import two_step_conv2d, two_step_linear

__all__ = [
    "ELEMENT_DTYPES",
    "clear_caches",
    "compile_kernels",
    "cuda_available",
    "dtype_name",
    "fused_ready",
    "fused_runner",
    "grouped_conv2d",
    "grouped_linear",
    "two_step_conv2d",
    "two_step_linear",
]
__all__ += host.__all__  # the cuBLAS argument builders
