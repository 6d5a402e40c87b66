"""The earlier group-wise implementation the paper compares against: per group, its own
gather and its own GEMM, launched one after another. Kept as a reference and for benchmarks;
built on torch ops, so it runs on every device."""

from __future__ import annotations

import torch

from .cpu.torch_ops import gather_conv_columns, shortcut_
from .geometry import ConvGeometry
from .weights import SparseWeights

__all__ = ["loop_conv2d", "loop_linear"]


def loop_conv2d(
    x: torch.Tensor,
    layer: SparseWeights,
    geometry: ConvGeometry,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The earlier implementation: per group, its own gather and its own GEMM, one after another
    (a ``residual`` is added afterwards, before the ReLU)."""
    weight, columns, bias = layer
    groups, group_rows, _ = weight.shape
    outputs = []
    for group in range(groups):
        gathered = gather_conv_columns(x, columns[group], geometry)  # (B, k, OH, OW)
        batch, kept, out_h, out_w = gathered.shape
        columns_matrix = gathered.reshape(batch, kept, out_h * out_w)
        if bias is None:
            part = torch.matmul(weight[group], columns_matrix)
        else:  # the bias inside the GEMM: one rounding in 16-bit types, as eager's conv has
            group_bias = bias[group * group_rows : (group + 1) * group_rows, None]
            part = torch.baddbmm(
                group_bias.expand(batch, group_rows, out_h * out_w),
                weight[group].expand(batch, group_rows, kept),
                columns_matrix,
            )
        outputs.append(part.view(batch, group_rows, out_h, out_w))
    out = torch.cat(outputs, dim=1)
    if residual is not None:
        return shortcut_(out, residual, relu)
    return out.relu_() if relu else out


def loop_linear(x: torch.Tensor, layer: SparseWeights, relu: bool = False) -> torch.Tensor:
    """The earlier implementation for linear layers: one gather and one GEMM per group."""
    weight, columns, bias = layer
    groups, group_rows, _ = weight.shape
    tokens = x.reshape(-1, x.shape[-1])
    outputs = []
    for group in range(groups):
        gathered = tokens[:, columns[group]]
        if bias is None:
            part = gathered @ weight[group].t()
        else:  # the bias inside the GEMM (one rounding in 16-bit types), as F.linear's addmm
            group_bias = bias[group * group_rows : (group + 1) * group_rows]
            part = torch.addmm(group_bias, gathered, weight[group].t())
        outputs.append(part)
    out = torch.cat(outputs, dim=1)
    return (out.relu_() if relu else out).view(*x.shape[:-1], groups * group_rows)
