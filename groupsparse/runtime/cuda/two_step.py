"""The paper's two steps on the GPU: an NVRTC-compiled gather of each group's kept im2col rows,
then one cuBLAS call for every group's product (strided-batched or grouped), then a bias +
ReLU kernel where the layer has either."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..geometry import ConvGeometry, conv_output_size
from ..weights import SparseWeights
from .driver import (
    _RUNTIME,
    _epilogue,
    _launch,
    _linear_call,
    _prepare,
    _run_gemm,
    _strided_conv_call,
    _vectorized,
)
from .nvrtc_source import vector_width

__all__ = ["two_step_conv2d", "two_step_linear"]


def two_step_conv2d(
    x: torch.Tensor, layer: SparseWeights, geometry: ConvGeometry, relu: bool = False
) -> torch.Tensor:
    """Group-sparse conv2d on the GPU in two steps, gather kernel then cuBLAS:
    ``(B, C, H, W)`` -> ``(B, groups*G, OH, OW)``.

    Example::

        >>> out = two_step_conv2d(x, layer, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1))
    """
    weight, columns, bias = layer
    x, weight = _prepare(x, weight, columns, bias)
    geometry = tuple(int(v) for v in geometry)
    groups, group_rows, kept = weight.shape
    batch, _, height, width = x.shape
    out_h, out_w = conv_output_size(height, width, geometry)
    pixels = out_h * out_w
    out = torch.empty(batch, groups * group_rows, out_h, out_w, dtype=x.dtype, device=x.device)

    def gather(functions: dict, stream: int) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        table = _RUNTIME.conv_table(columns, geometry, x.shape)
        rows = groups * kept
        gathered = torch.empty(batch * rows * pixels, dtype=x.dtype, device=x.device)
        problems, offsets, pointers = 0, 0, None
        if batch == 1:
            call = _strided_conv_call(groups, group_rows, kept, pixels)
        else:
            state = _RUNTIME.grouped_state(x.device, (batch, groups, group_rows, kept, pixels))
            call = state.call
            pointers = state.pointers.get(stream)
            if pointers is None:
                pointers = torch.empty(3 * call.problems, dtype=torch.int64, device=x.device)
                state.pointers[stream] = pointers
            problems, offsets = call.problems, state.offsets.data_ptr()
        vectorized, total = _gather_vectors(gathered, pixels, x)
        _launch(
            functions, "gather_conv", vectorized, max(total, 3 * problems), stream,
            x=x.data_ptr(), out=gathered.data_ptr(), table=table.data_ptr(),
            total_vectors=total, rows=rows, height=height, width=width, out_w=out_w,
            pixels=pixels, stride_h=geometry[2], stride_w=geometry[3],
            image_stride=x.shape[1] * height * width, problems=problems, problem_offsets=offsets,
            base_a=gathered.data_ptr(), base_b=weight.data_ptr(), base_c=out.data_ptr(),
            pointers=0 if pointers is None else pointers.data_ptr(),
        )  # fmt: skip
        return gathered, call, pointers

    return _two_steps(x, weight, bias, relu, out, pixels, gather)


def two_step_linear(x: torch.Tensor, layer: SparseWeights, relu: bool = False) -> torch.Tensor:
    """Group-sparse linear on the GPU in two steps, gather kernel then cuBLAS:
    ``(..., K)`` -> ``(..., groups*G)``.

    Example::

        >>> out = two_step_linear(x, layer, relu=False)
    """
    weight, columns, bias = layer
    x, weight = _prepare(x, weight, columns, bias)
    groups, group_rows, kept = weight.shape
    in_features = x.shape[-1]
    tokens = x.numel() // in_features if in_features else 0
    out = torch.empty(*x.shape[:-1], groups * group_rows, dtype=x.dtype, device=x.device)

    def gather(functions: dict, stream: int) -> tuple[torch.Tensor, Any, None]:
        table = _RUNTIME.linear_table(columns, in_features)
        rows = groups * kept
        gathered = torch.empty(tokens * rows, dtype=x.dtype, device=x.device)
        vectorized, total = _gather_vectors(gathered, rows, x)
        _launch(
            functions, "gather_linear", vectorized, total, stream,
            x=x.data_ptr(), out=gathered.data_ptr(), columns=table.data_ptr(),
            total_vectors=total, rows=rows, in_features=in_features,
        )  # fmt: skip
        return gathered, _linear_call(tokens, groups, group_rows, kept), None

    return _two_steps(x, weight, bias, relu, out, 1, gather)


def _gather_vectors(gathered: torch.Tensor, run: int, x: torch.Tensor) -> tuple[bool, int]:
    """(whether the gather moves vectors, how many vectors or elements it moves) for a gather
    that copies runs of ``run`` elements of ``x`` into ``gathered``."""
    element_bytes = x.element_size()
    vectorized = _vectorized(run, gathered, element_bytes=element_bytes)
    width_v = vector_width(element_bytes) if vectorized else 1
    return vectorized, gathered.numel() // width_v


def _two_steps(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    out: torch.Tensor,
    pixels: int,
    gather: Callable[[dict, int], tuple[torch.Tensor, Any, torch.Tensor | None]],
) -> torch.Tensor:
    """What conv and linear share: on ``x``'s device and current stream, ``gather`` launches
    the layer's gather and returns (gathered, cuBLAS call, pointer array), one cuBLAS call
    multiplies into ``out`` (zeros where no column is kept), then the bias + ReLU epilogue over
    ``pixels`` per output row."""
    if out.numel() == 0:
        return out
    groups, group_rows, kept = weight.shape
    with torch.cuda.device(x.device):
        _RUNTIME.ensure_context(x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        functions = _RUNTIME.kernels(x.device, x.dtype)
        if kept == 0:
            out.zero_()
        else:
            gathered, call, pointers = gather(functions, stream)
            handle = _RUNTIME.cublas_handle(x.device, stream)
            _run_gemm(call, {"gathered": gathered, "weight": weight}, out, handle, pointers)
        _epilogue(functions, out, bias, relu, groups * group_rows, pixels, stream)
    return out
