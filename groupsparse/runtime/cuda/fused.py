"""The fused Triton kernels on the GPU: one kernel per layer that gathers each group's kept
columns into registers and multiplies them there (``triton_fused.py`` says why); where Triton
cannot run, the two-step kernels."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..geometry import ConvGeometry, conv_output_size
from ..weights import SparseWeights
from .driver import _RUNTIME, _prepare
from .two_step import two_step_conv2d, two_step_linear

__all__ = ["ELEMENT_DTYPES", "fused_ready", "fused_runner", "grouped_conv2d", "grouped_linear"]


# The earlier implementation the paper compares against (one gather and one GEMM per group)
# is made of torch ops, which run on CUDA tensors as they are: cuBLAS per group.


ELEMENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _triton_fused() -> Any:
    """runtime/cuda/triton_fused.py, or None where Triton cannot be imported (or runs interpreted)."""
    try:
        from . import triton_fused
    except ImportError:
        return None
    return None if triton_fused.INTERPRETED else triton_fused


def fused_runner() -> Any:
    """The fused Triton kernels' module, or None where Triton cannot run them here."""
    return _triton_fused()


def fused_ready(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The one place that decides whether the fused Triton kernel runs a CUDA layer."""
    return x.device.type == "cuda" and x.dtype in ELEMENT_DTYPES and _triton_fused() is not None


def grouped_conv2d(
    x: torch.Tensor, layer: SparseWeights, geometry: ConvGeometry, relu: bool = False
) -> torch.Tensor:
    """Group-sparse conv2d on the GPU: ``(B, C, H, W)`` -> ``(B, groups*G, OH, OW)``, one fused
    Triton kernel where ``fused_ready``, else ``two_step_conv2d``.

    Example::

        >>> out = grouped_conv2d(x, layer, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), True)
    """
    weight, columns, bias = layer
    if not fused_ready(x, weight) or weight.shape[2] == 0:
        return two_step_conv2d(x, layer, geometry, relu)
    x, weight = _prepare(x, weight, columns, bias)
    geometry = tuple(int(v) for v in geometry)
    groups, group_rows, _ = weight.shape
    out_h, out_w = conv_output_size(x.shape[2], x.shape[3], geometry)
    out = torch.empty(x.shape[0], groups * group_rows, out_h, out_w, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    _check_bias(bias, groups * group_rows, out.dtype)
    batch, channels, height, width = x.shape
    with torch.cuda.device(x.device):
        fused = _triton_fused()
        wide = fused.wide_plan(geometry, height, width)
        if geometry[:8] == (1, 1, 1, 1, 0, 0, 0, 0):  # whole channel planes are the rows
            planes = _RUNTIME.linear_table(columns, channels)
            fused.rows_product(
                x.view(batch, channels, height * width), weight, planes, bias, relu,
                out.view(batch, out.shape[1], height * width), transposed_out=False,
            )  # fmt: skip
        elif wide is not None:  # stride 1: taps are aligned runs of shifted padded copies
            rows, shifts = _RUNTIME.wide_tables(columns, geometry, channels, wide[0])
            fused.wide_conv2d(x, weight, rows, shifts, bias, geometry, relu, out, wide)
        else:
            table = _RUNTIME.conv_table(columns, geometry, x.shape)
            fused.fused_conv2d(x, weight, table, bias, geometry, relu, out)
    return out


def grouped_linear(x: torch.Tensor, layer: SparseWeights, relu: bool = False) -> torch.Tensor:
    """Group-sparse linear on the GPU: ``(..., K)`` -> ``(..., groups*G)``, one fused Triton
    kernel where ``fused_ready``, else ``two_step_linear``.

    Example::

        >>> out = grouped_linear(x, layer, relu=False)
    """
    weight, columns, bias = layer
    if not fused_ready(x, weight) or weight.shape[2] == 0:
        return two_step_linear(x, layer, relu)
    x, weight = _prepare(x, weight, columns, bias)
    groups, group_rows, _ = weight.shape
    in_features = x.shape[-1]
    out = torch.empty(*x.shape[:-1], groups * group_rows, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    _check_bias(bias, groups * group_rows, out.dtype)
    with torch.cuda.device(x.device):
        table = _RUNTIME.linear_table(columns, in_features)
        _triton_fused().fused_linear(
            x.reshape(-1, in_features), weight, table, bias, relu, out.view(-1, out.shape[-1])
        )
    return out


def _check_bias(bias: torch.Tensor | None, channels: int, dtype: torch.dtype) -> None:
    if bias is not None and (
        bias.numel() != channels or bias.dtype != dtype or not bias.is_contiguous()
    ):
        raise ValueError(
            f"bias must have {channels} contiguous {dtype} values; got {bias.numel()} {bias.dtype}"
        )
