"""CPU kernels for group-sparse layers, built on PyTorch's own ops (MKL/oneDNN BLAS underneath).

A group-sparse layer is given by a packed weight ``(groups, G, k)`` and the kept columns
``(groups, k)`` of each group on the (M, K) view (for a conv: K indexes input channel,
kernel row, kernel column in im2col order). Output channel ``g*G + r`` is row r of group g.

- ``grouped_conv2d`` / ``grouped_linear``: one gather ("reordered im2col": each group's kept
  columns written contiguously, straight from the padded input) and one batched GEMM that
  writes every group's rows straight into the output.
- ``loop_conv2d`` / ``loop_linear``: the earlier group-wise implementation the paper compares
  against: one gather and one GEMM per group, launched one after another. Kept for benchmarks.

Nothing here knows of fx or of plans; the custom operators in ``ops.py`` call these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "ConvGeometry",
    "grouped_conv2d",
    "grouped_linear",
    "loop_conv2d",
    "loop_linear",
    "conv_output_size",
]

# (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
#  dilation_h, dilation_w) - a plain tuple so it passes through torch.library as int[]
ConvGeometry = tuple[int, int, int, int, int, int, int, int, int, int]


def conv_output_size(height: int, width: int, geometry: ConvGeometry) -> tuple[int, int]:
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = geometry
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    return out_h, out_w


def _column_views(x: torch.Tensor, geometry: ConvGeometry) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The padded input, and a view whose slice at flat offset o is the (OH, OW) window that
    column o of the im2col matrix would hold. Returns (view, strides helper, OH, OW)."""
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = geometry
    batch, channels, height, width = x.shape
    out_h, out_w = conv_output_size(height, width, geometry)
    padded = F.pad(x.contiguous(), (left, right, top, bottom)) if (top or bottom or left or right) else x.contiguous()
    padded_h, padded_w = padded.shape[2], padded.shape[3]
    plane = padded_h * padded_w
    # every window start o with o + last window element inside the channel planes
    starts = channels * plane - ((out_h - 1) * sh * padded_w + (out_w - 1) * sw)
    windows = padded.as_strided(
        (batch, starts, out_h, out_w), (channels * plane, 1, sh * padded_w, sw)
    )
    return windows, padded, out_h, out_w


def _column_offsets(columns: torch.Tensor, geometry: ConvGeometry, padded_h: int, padded_w: int) -> torch.Tensor:
    """Flat offsets into the padded input of each kept im2col column (c, i, j)."""
    kh, kw, _, _, _, _, _, _, dh, dw = geometry
    taps = kh * kw
    channel = columns // taps
    tap = columns % taps
    return channel * (padded_h * padded_w) + (tap // kw) * dh * padded_w + (tap % kw) * dw


def gather_conv_columns(x: torch.Tensor, columns: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """Reordered im2col: ``(B, len(columns), OH, OW)``, column n holding im2col row columns[n]."""
    windows, padded, out_h, out_w = _column_views(x, geometry)
    offsets = _column_offsets(columns.reshape(-1), geometry, padded.shape[2], padded.shape[3])
    return windows[:, offsets]


def _epilogue(out: torch.Tensor, relu: bool) -> torch.Tensor:
    return out.relu_() if relu else out


def grouped_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool = False,
) -> torch.Tensor:
    """Group-sparse conv2d: ``(B, C, H, W)`` -> ``(B, groups*G, OH, OW)``."""
    groups, group_rows, kept = weight.shape
    batch = x.shape[0]
    gathered = gather_conv_columns(x, columns, geometry)
    out_h, out_w = gathered.shape[2], gathered.shape[3]
    pixels = out_h * out_w
    gathered = gathered.reshape(batch, groups, kept, pixels)
    out = torch.empty(batch, groups, group_rows, pixels, dtype=x.dtype, device=x.device)
    for image in range(batch):
        if bias is None:
            torch.bmm(weight, gathered[image], out=out[image])
        else:
            torch.baddbmm(bias.view(groups, group_rows, 1), weight, gathered[image], out=out[image])
    return _epilogue(out, relu).view(batch, groups * group_rows, out_h, out_w)


def grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = False,
) -> torch.Tensor:
    """Group-sparse linear: ``(..., K)`` -> ``(..., groups*G)``."""
    groups, group_rows, kept = weight.shape
    tokens = x.reshape(-1, x.shape[-1])
    gathered = tokens[:, columns.reshape(-1)].view(-1, groups, kept).transpose(0, 1)
    out = torch.bmm(gathered, weight.transpose(1, 2))  # (groups, T, G)
    out = out.transpose(0, 1).reshape(tokens.shape[0], groups * group_rows)
    if bias is not None:
        out.add_(bias)
    return _epilogue(out, relu).view(*x.shape[:-1], groups * group_rows)


def loop_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool = False,
) -> torch.Tensor:
    """The earlier implementation: per group, its own gather and its own GEMM, one after another."""
    groups, group_rows, _ = weight.shape
    outputs = []
    for group in range(groups):
        gathered = gather_conv_columns(x, columns[group], geometry)  # (B, k, OH, OW)
        batch, kept, out_h, out_w = gathered.shape
        part = torch.matmul(weight[group], gathered.reshape(batch, kept, out_h * out_w))
        if bias is not None:
            part = part + bias[group * group_rows : (group + 1) * group_rows, None]
        outputs.append(part.view(batch, group_rows, out_h, out_w))
    return _epilogue(torch.cat(outputs, dim=1), relu)


def loop_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = False,
) -> torch.Tensor:
    """The earlier implementation for linear layers: one gather and one GEMM per group."""
    groups, group_rows, _ = weight.shape
    tokens = x.reshape(-1, x.shape[-1])
    outputs = []
    for group in range(groups):
        part = tokens[:, columns[group]] @ weight[group].t()
        if bias is not None:
            part = part + bias[group * group_rows : (group + 1) * group_rows]
        outputs.append(part)
    return _epilogue(torch.cat(outputs, dim=1), relu).view(*x.shape[:-1], groups * group_rows)
